package terminate

import (
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Detach detaches an attachment (s.Detach) and then terminates the sockets
// that clients still hold to the container as a backend, so a removed
// container leaves no client hanging. It is the detach of every path that
// removes a container: portcullisctl detach, CNI DEL, OCI poststop.
//
// The error is the detach's only. Terminating comes after the detach (the
// container's service slots are gone by then, so no new client reaches
// it) and its failure, such as a kernel without bpf_sock_destroy, never
// blocks it: it is written to log as one line and the report is nil.
func Detach(s *state.State, id string, log io.Writer) (*Report, error) {
	a, err := s.Get(id)
	if err != nil {
		return nil, s.Detach(id) // unknown ids and leftover folders
	}
	// The port registry of the container is dropped by the detach, so
	// where it listens is read first.
	targets := attachmentTargets(s, a)
	if err := s.Detach(id); err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return &Report{}, nil
	}
	report, err := Run(s, targets, false)
	if err != nil {
		fmt.Fprintf(log, "warning: terminate sockets connected to %s: %v\n", id, err)
		return nil, nil
	}
	return report, nil
}

// attachmentTargets is where clients can be connected to a container.
//
// A container with a network namespace of its own owns its addresses: once
// it is gone every socket whose peer is one of them is dead, whatever the
// port. A host-network container shares the host's addresses with every
// other host-network process, which use them as source addresses too, so
// only its server ports are targets: the ports its policy provides or
// maps, and those it is bound to now (the port registry; empty once its
// processes have exited, hence read before the detach).
func attachmentTargets(s *state.State, a *state.Attachment) []Target {
	var targets []Target
	if ownNetNS(a.NetNS) {
		for _, addr := range a.Policy.Addresses {
			targets = append(targets, Target{Addr: addr})
		}
		return targets
	}
	type portProto struct {
		port  uint16
		proto string
	}
	ports := map[portProto]bool{}
	for _, p := range services.ProvidersOf(a.ID, a.CgroupID, &a.Policy) {
		ports[portProto{p.Port, string(p.Protocol)}] = true
	}
	for _, m := range a.Policy.PortMappings {
		proto := string(m.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		ports[portProto{m.HostPort, proto}] = true
	}
	if m, err := s.Services(); err == nil {
		if bound, err := m.Registry(); err == nil {
			for _, l := range bound {
				if l.CgroupID != a.CgroupID {
					continue
				}
				if l.Address.Addr().IsUnspecified() {
					ports[portProto{l.Address.Port(), string(l.Protocol)}] = true
				} else {
					targets = append(targets, Target{Addr: l.Address.Addr(), Port: l.Address.Port(), Protocol: string(l.Protocol)})
				}
			}
		}
		m.Close()
	}
	for _, addr := range a.Policy.Addresses {
		for pp := range ports {
			targets = append(targets, Target{Addr: addr, Port: pp.port, Protocol: pp.proto})
		}
	}
	return targets
}

// ownNetNS tells whether an attachment's recorded namespace is another
// than the caller's (the host's). A path that no longer exists was the
// namespace of a container that is gone.
func ownNetNS(path string) bool {
	if path == "" {
		return false
	}
	var st, host unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return true
	}
	if unix.Stat("/proc/self/ns/net", &host) != nil {
		return true
	}
	return st.Dev != host.Dev || st.Ino != host.Ino
}

func endpointTarget(e services.Endpoint) Target {
	return Target{Addr: e.Addr.Addr(), Port: e.Addr.Port(), Protocol: string(e.Protocol)}
}

// ServiceBackends returns where a service sends clients: its static
// backends and the live endpoints of its providers. Read it before
// removing the service or a backend.
func ServiceBackends(svc *services.Service) []Target {
	var targets []Target
	for _, b := range svc.Backends {
		if b.Endpoint != nil && !b.Endpoint.Addr.Addr().IsUnspecified() {
			targets = append(targets, endpointTarget(*b.Endpoint))
		}
	}
	return targets
}

// Removed terminates the sockets connected to backends the operator took
// out of service (portcullisctl service del, service backend del). Call it
// after the maps changed, with the state held exclusively. A backend that
// is still a backend of some service keeps its clients.
func Removed(s *state.State, m *services.Maps, removed []Target) (*Report, error) {
	still := map[Target]bool{}
	list, err := m.List()
	if err != nil {
		return nil, err
	}
	for i := range list {
		for _, t := range ServiceBackends(&list[i]) {
			still[t] = true
		}
	}
	var targets []Target
	for _, t := range removed {
		t.Addr = t.Addr.Unmap()
		if !still[t] {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return &Report{}, nil
	}
	return Run(s, targets, false)
}
