package state

import (
	"encoding/binary"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Flags of struct policy (bpf/common.h).
const (
	policyHasAddr4     = 1 << 0
	policyHasAddr6     = 1 << 1
	policyRestrictPort = 1 << 2
	policyHasMark      = 1 << 3
	policyHasPriority  = 1 << 4
	policyHasDSCP      = 1 << 5
	policyAllowRaw     = 1 << 8
	policyNoEgress     = 1 << 9
	policyNoLimits     = 1 << 10
)

// Directions of struct portmap_key (bpf/common.h).
const (
	portmapToHost      = 0
	portmapToContainer = 1
)

type portmapEntry struct {
	key   bpfobj.PortcullisPortmapKey
	value uint16
}

// compiled is a policy in the form the kernel programs read.
type compiled struct {
	policy   bpfobj.PortcullisPolicy
	portmaps []portmapEntry
}

// compile turns a validated policy into the entries of the policies and
// portmaps maps for one cgroup.
func compile(cgroupID uint64, p *policy.Policy) *compiled {
	var c compiled
	if a, ok := p.Address(false); ok {
		c.policy.Flags |= policyHasAddr4
		c.policy.Addr4 = nativeOfNetwork(a.As4())
	}
	if a, ok := p.Address(true); ok {
		c.policy.Flags |= policyHasAddr6
		b := a.As16()
		for i := range c.policy.Addr6 {
			c.policy.Addr6[i] = nativeOfNetwork([4]byte(b[4*i : 4*i+4]))
		}
	}
	if p.AllowRawSockets {
		c.policy.Flags |= policyAllowRaw
	}
	// connect and sendmsg skip the egress and caps lookups of a policy
	// without them. Said of the policy rather than of the maps: the
	// policy entry is written before syncGuards writes its rules and caps
	// (Attach, replacePolicy), so a policy change that adds them is
	// enforced once both are written, as it was without the flags.
	if !p.HasEgress() {
		c.policy.Flags |= policyNoEgress
	}
	if p.ConnectionLimits == nil {
		c.policy.Flags |= policyNoLimits
	}
	if len(p.AllowedPorts) > 0 {
		c.policy.Flags |= policyRestrictPort
		c.policy.NrRanges = uint32(len(p.AllowedPorts))
		for i, r := range p.AllowedPorts {
			c.policy.Ranges[i].First = r.First
			c.policy.Ranges[i].Last = r.Last
		}
	}
	if p.Mark != nil {
		c.policy.Flags |= policyHasMark
		c.policy.Mark = *p.Mark
	}
	if p.Priority != nil {
		c.policy.Flags |= policyHasPriority
		c.policy.Priority = *p.Priority
	}
	if p.DSCP != nil {
		c.policy.Flags |= policyHasDSCP
		c.policy.Dscp = *p.DSCP
	}
	for _, m := range p.PortMappings {
		proto := m.Protocol.Number()
		c.portmaps = append(c.portmaps,
			portmapEntry{bpfobj.PortcullisPortmapKey{CgroupId: cgroupID, Port: m.ContainerPort, Protocol: proto, Direction: portmapToHost}, m.HostPort},
			portmapEntry{bpfobj.PortcullisPortmapKey{CgroupId: cgroupID, Port: m.HostPort, Protocol: proto, Direction: portmapToContainer}, m.ContainerPort},
		)
	}
	return &c
}

// nativeOfNetwork returns the uint32 whose in-memory bytes are b, which is
// how the kernel context holds a network-order address in a __u32.
func nativeOfNetwork(b [4]byte) uint32 {
	return binary.NativeEndian.Uint32(b[:])
}
