package services

import (
	"fmt"
	"slices"
	"strings"
)

// Remote backends are live backends of other hosts that portcullisctl
// sync learns from etcd. The kernel sees them as static slots (it only
// reads a static slot's address and port); the slot's otherwise unused
// cgroup id holds a node id, so the control plane tells them from the
// static backends an operator typed and keeps them across declarations.
// Node names live in svc_names next to service names, as "node:NAME"
// (':' is not allowed in a service name, and the kernel never reads
// svc_names), so `service show` names the node without a daemon.

const nodePrefix = "node:"

// Remote is one backend of a service on another host.
type Remote struct {
	Node     string   `json:"node"`
	Endpoint Endpoint `json:"endpoint"`
}

func (r Remote) String() string { return r.Node + "/" + r.Endpoint.String() }

// ValidateNode checks a node name.
func ValidateNode(node string) error {
	if len(nodePrefix)+len(node) > 63 || ValidateName(node) != nil {
		return fmt.Errorf("node name %q: must be 1-%d letters, digits, _ . - (starting with a letter or digit)", node, 63-len(nodePrefix))
	}
	return nil
}

// nodeID returns a node's id, allocating one the first time.
func (m *Maps) nodeID(node string) (uint32, error) {
	if err := ValidateNode(node); err != nil {
		return 0, err
	}
	if err := m.loadNames(); err != nil {
		return 0, err
	}
	if id, ok := m.nodeIDs[node]; ok {
		return id, nil
	}
	for id := uint32(1); id != 0; id++ {
		if _, used := m.nodeNames[id]; used {
			continue
		}
		if err := put(m.nameMap, "service names", nameKey(nodePrefix+node), &id); err != nil {
			return 0, err
		}
		m.nodeIDs[node], m.nodeNames[id] = id, node
		return id, nil
	}
	return 0, fmt.Errorf("too many nodes")
}

func remotesOf(svc *Service) []Remote {
	var list []Remote
	for _, b := range svc.Backends {
		if b.Kind == "remote" {
			list = append(list, Remote{b.Node, *b.Endpoint})
		}
	}
	return list
}

// RemotesOf lists a service's remote backends.
func RemotesOf(svc *Service) []Remote { return remotesOf(svc) }

func sortRemotes(list []Remote) {
	slices.SortFunc(list, func(a, b Remote) int { return strings.Compare(a.String(), b.String()) })
}

// SetRemotes makes remotes the remote backends of a service, keeping its
// static and provider backends. It reports whether anything changed; an
// unchanged set writes nothing.
func (m *Maps) SetRemotes(svc *Service, remotes []Remote, providers []Provider) (bool, error) {
	want := slices.Clone(remotes)
	have := remotesOf(svc)
	sortRemotes(want)
	sortRemotes(have)
	if slices.Equal(want, have) {
		return false, nil
	}
	for _, r := range want {
		if _, err := m.nodeID(r.Node); err != nil {
			return false, err
		}
	}
	return true, m.writeSlots(svc.ID, m.slotsFor(svc.Name, staticsOf(svc), want, providers))
}
