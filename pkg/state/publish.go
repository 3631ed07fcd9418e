package state

import (
	"fmt"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/publish"
)

// A container keyed by its network namespace publishes its port mappings
// as host ports (pkg/publish) instead of remapping its binds: it binds its
// containerPort unchanged, in a namespace of its own.

// bindTimePolicy is the policy the bind programs enforce. For a
// namespace-keyed attachment its port mappings are no remaps, and a
// published containerPort may be bound (as a remapped one may be).
func bindTimePolicy(p *policy.Policy, keyedByNetNS bool) (*policy.Policy, error) {
	if !keyedByNetNS {
		return p, nil
	}
	c := *p
	c.PortMappings = nil
	if len(p.AllowedPorts) > 0 {
		c.AllowedPorts = append([]policy.PortRange(nil), p.AllowedPorts...)
		for _, m := range p.PortMappings {
			c.AllowedPorts = append(c.AllowedPorts, policy.PortRange{First: m.ContainerPort, Last: m.ContainerPort})
		}
		if len(c.AllowedPorts) > policy.MaxPortRanges {
			return nil, fmt.Errorf("allowedPorts and the published containerPorts make %d port ranges, at most %d fit: merge some allowedPorts", len(c.AllowedPorts), policy.MaxPortRanges)
		}
	}
	return &c, nil
}

// publishPorts publishes a namespace-keyed attachment's port mappings in
// the caller's network namespace (the runtime's: the host's).
func (s *State) publishPorts(a *Attachment) error {
	if !a.KeyedByNetNS() || len(a.Policy.PortMappings) == 0 {
		return nil
	}
	host, err := NetNSCookie("/proc/self/ns/net")
	if err != nil {
		return err
	}
	addrs, err := publish.HostAddrs()
	if err != nil {
		return err
	}
	m, err := publish.Open(s.dir)
	if err != nil {
		return err
	}
	defer m.Close()
	r := publish.Request{HostNetNS: host, HostAddrs: addrs, Owner: a.CgroupID, Mappings: a.Policy.PortMappings}
	r.Addr4, _ = a.Policy.Address(false)
	r.Addr6, _ = a.Policy.Address(true)
	return m.Publish(r, func(key uint64) string {
		if id, err := s.attachmentOfKey(key); err == nil && id != "" {
			return "attachment " + id
		}
		return "another container"
	})
}

// unpublishPorts removes what publishPorts wrote.
func (s *State) unpublishPorts(a *Attachment) error {
	if !a.KeyedByNetNS() {
		return nil
	}
	m, err := publish.Open(s.dir)
	if err != nil {
		return err
	}
	defer m.Close()
	return m.Unpublish(a.CgroupID)
}
