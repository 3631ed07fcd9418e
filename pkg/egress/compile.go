// Package egress turns a policy's egress rules into the kernel maps of
// bpf/egress.h and keeps group membership current as containers come and
// go.
//
// The programs answer "first matching rule wins" with one LPM lookup: for
// every prefix that appears in a container's rules (and the IPv4 and IPv6
// roots) the trie holds, in order, the rules that can match an address
// under it. CIDRs are nested or disjoint, so the longest prefix containing
// a destination has exactly the rules whose CIDR contains the destination,
// plus the rules without a CIDR. The list ends at the first rule that
// matches unconditionally, or with egressDefault.
package egress

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// MaxMatch is how many rules one prefix can carry (MAX_EGRESS_MATCH).
const MaxMatch = len(bpfobj.PortcullisEgressMatch{}.Rules)

// Entry is one LPM trie entry.
type Entry struct {
	Key   bpfobj.PortcullisEgressKey
	Value bpfobj.PortcullisEgressMatch
}

// Roots every compiled policy has: a miss in the trie then means "no rules".
var (
	rootV4 = netip.MustParsePrefix("::ffff:0.0.0.0/96")
	rootV6 = netip.MustParsePrefix("::/0")
)

// Compile returns the trie entries of one container's rules; bits gives
// the bit of every group the rules name. A policy without egress rules and
// with the default allow has no entries.
func Compile(owner uint64, p *policy.Policy, bits map[string]uint) ([]Entry, error) {
	if !p.HasEgress() {
		return nil, nil
	}
	prefixes := []netip.Prefix{rootV4, rootV6}
	seen := map[netip.Prefix]bool{rootV4: true, rootV6: true}
	for _, r := range p.Egress {
		if !r.CIDR.IsValid() {
			continue
		}
		pfx := as16(r.CIDR)
		if !seen[pfx] {
			seen[pfx] = true
			prefixes = append(prefixes, pfx)
		}
	}
	entries := make([]Entry, 0, len(prefixes))
	for _, pfx := range prefixes {
		e := Entry{Key: key(owner, pfx)}
		if err := fill(&e.Value, pfx, p, bits); err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// fill writes the candidate rules of addresses under pfx, in policy order.
func fill(m *bpfobj.PortcullisEgressMatch, pfx netip.Prefix, p *policy.Policy, bits map[string]uint) error {
	v4 := pfx.Addr().Is4In6()
	for i := range p.Egress {
		r := &p.Egress[i]
		if r.CIDR.IsValid() {
			c := as16(r.CIDR)
			if r.CIDR.Addr().Is4() != v4 || c.Bits() > pfx.Bits() || !c.Contains(pfx.Addr()) {
				continue
			}
		}
		if int(m.Nr) == MaxMatch {
			return fmt.Errorf("egress[%d]: more than %d rules can match destinations in %s (rules without a cidr count for every destination); merge or reorder rules", i, MaxMatch, show(pfx))
		}
		m.Rules[m.Nr] = rule(r, bits)
		m.Nr++
		if unconditional(r) {
			return nil // nothing after it can match
		}
	}
	if int(m.Nr) == MaxMatch {
		return fmt.Errorf("egressDefault: more than %d rules can match destinations in %s; merge or reorder rules", MaxMatch, show(pfx))
	}
	m.Rules[m.Nr].Action = action(p.EgressDefault)
	m.Nr++
	return nil
}

func unconditional(r *policy.EgressRule) bool {
	return len(r.Ports) == 0 && r.Protocol == "" && r.Group == ""
}

func rule(r *policy.EgressRule, bits map[string]uint) bpfobj.PortcullisEgressRule {
	out := bpfobj.PortcullisEgressRule{Action: action(r.Action)}
	if r.Protocol != "" {
		out.Protocol = r.Protocol.Number()
	}
	if r.Group != "" {
		out.Groups = 1 << bits[r.Group]
	}
	out.NrPorts = uint8(len(r.Ports))
	for i, pr := range r.Ports {
		out.Ports[i] = bpfobj.PortcullisPortRange{First: pr.First, Last: pr.Last}
	}
	return out
}

// action is EGRESS_ALLOW or EGRESS_DENY; empty is allow.
func action(a string) uint8 {
	if a == policy.Deny {
		return 0
	}
	return 1
}

// as16 is the prefix in the trie's address space: IPv4 as IPv4-mapped.
func as16(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
	}
	return p
}

func show(p netip.Prefix) string {
	if p.Addr().Is4In6() {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).String()
	}
	return p.String()
}

// key is the trie key of pfx for owner; the owner's 64 bits lead.
func key(owner uint64, pfx netip.Prefix) bpfobj.PortcullisEgressKey {
	return bpfobj.PortcullisEgressKey{
		Prefixlen: uint32(64 + pfx.Bits()),
		Owner:     [2]uint32{uint32(owner), uint32(owner >> 32)},
		Addr:      Words(pfx.Addr()),
	}
}

// Words is an address as the programs hold it: IPv6 or IPv4-mapped, in
// network byte order in native-endian words.
func Words(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}
