package egress_test

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/egress"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// reference is the egress semantics written plainly: the first rule whose
// every set part matches decides, else egressDefault.
func reference(p *policy.Policy, dst netip.Addr, port uint16, proto policy.Protocol, groupsOf func(netip.Addr) []string) bool {
	for _, r := range p.Egress {
		if r.CIDR.IsValid() && !r.CIDR.Contains(dst) {
			continue
		}
		if r.Protocol != "" && r.Protocol != proto {
			continue
		}
		if len(r.Ports) > 0 && !inPorts(r.Ports, port) {
			continue
		}
		if r.Group != "" && !contains(groupsOf(dst), r.Group) {
			continue
		}
		return r.Action == policy.Allow
	}
	return p.EgressDefault != policy.Deny
}

func inPorts(ranges []policy.PortRange, port uint16) bool {
	for _, pr := range ranges {
		if port >= pr.First && port <= pr.Last {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// kernel does what bpf/egress.h does with the compiled entries: the
// longest prefix of the owner that contains the destination, then the
// first matching candidate.
func kernel(entries []egress.Entry, dst netip.Addr, port uint16, proto uint8, groups uint64) bool {
	a16 := netip.AddrFrom16(dst.As16())
	best := -1
	for i, e := range entries {
		bits := int(e.Key.Prefixlen) - 64
		pfx := netip.PrefixFrom(addrOfWords(e.Key.Addr), bits)
		if pfx.Contains(a16) && (best < 0 || bits > int(entries[best].Key.Prefixlen)-64) {
			best = i
		}
	}
	if best < 0 {
		return true
	}
	m := &entries[best].Value
	for i := 0; i < int(m.Nr); i++ {
		r := &m.Rules[i]
		if r.Protocol != 0 && r.Protocol != proto {
			continue
		}
		if r.NrPorts > 0 {
			in := false
			for _, pr := range r.Ports[:r.NrPorts] {
				in = in || (port >= pr.First && port <= pr.Last)
			}
			if !in {
				continue
			}
		}
		if r.Groups != 0 && r.Groups&groups == 0 {
			continue
		}
		return r.Action == 1
	}
	return true
}

func addrOfWords(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	return netip.AddrFrom16(b)
}

// RandomPolicy makes nested and overlapping rules over a small address
// space, so that random destinations hit every case.
func RandomPolicy(r *rand.Rand, n int) *policy.Policy {
	p := &policy.Policy{}
	for len(p.Egress) < n {
		rule := policy.EgressRule{Action: []string{policy.Allow, policy.Deny}[r.Intn(2)]}
		switch r.Intn(6) {
		case 0:
			rule.Group = []string{"prod", "nonprod"}[r.Intn(2)]
		case 1: // no address part
		case 2:
			rule.CIDR = netip.MustParsePrefix("::1/128")
		default:
			bits := 8 + r.Intn(25)
			addr := netip.AddrFrom4([4]byte{127, 13, byte(r.Intn(4)), byte(r.Intn(4))})
			rule.CIDR = netip.PrefixFrom(addr, bits).Masked()
		}
		if r.Intn(3) == 0 {
			rule.Protocol = []policy.Protocol{policy.TCP, policy.UDP}[r.Intn(2)]
		}
		if r.Intn(3) == 0 {
			first := uint16(13000 + r.Intn(8))
			rule.Ports = []policy.PortRange{{First: first, Last: first + uint16(r.Intn(3))}}
		}
		p.Egress = append(p.Egress, rule)
	}
	if r.Intn(2) == 0 {
		p.EgressDefault = policy.Deny
	}
	return p
}

func TestCompiledRulesMatchTheReference(t *testing.T) {
	r := rand.New(rand.NewSource(13))
	bits := map[string]uint{"prod": 0, "nonprod": 5}
	groupsOf := func(a netip.Addr) []string {
		if a.Is4() && a.As4()[3]%2 == 1 {
			return []string{"nonprod"}
		}
		return nil
	}
	for round := 0; round < 300; round++ {
		p := RandomPolicy(r, 1+r.Intn(8))
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		entries, err := egress.Compile(42, p, bits)
		if err != nil {
			t.Fatalf("%+v: %v", p.Egress, err)
		}
		for probe := 0; probe < 50; probe++ {
			dst := netip.AddrFrom4([4]byte{127, 13, byte(r.Intn(4)), byte(r.Intn(4))})
			if r.Intn(5) == 0 {
				dst = netip.MustParseAddr("::1")
			}
			port := uint16(13000 + r.Intn(10))
			proto := []policy.Protocol{policy.TCP, policy.UDP}[r.Intn(2)]
			var groups uint64
			if contains(groupsOf(dst), "nonprod") {
				groups = 1 << 5
			}
			want := reference(p, dst, port, proto, groupsOf)
			if got := kernel(entries, dst, port, proto.Number(), groups); got != want {
				t.Fatalf("policy %+v default %q: %s:%d/%s allowed=%v, want %v", p.Egress, p.EgressDefault, dst, port, proto, got, want)
			}
		}
	}
}

func TestNoRulesNoEntries(t *testing.T) {
	if e, _ := egress.Compile(1, &policy.Policy{}, nil); len(e) != 0 {
		t.Fatalf("%d entries for a policy without rules", len(e))
	}
	e, _ := egress.Compile(1, &policy.Policy{EgressDefault: policy.Deny}, nil)
	if len(e) != 2 || e[0].Value.Nr != 1 || e[0].Value.Rules[0].Action != 0 {
		t.Fatalf("default deny: %+v", e)
	}
}

// A thousand disjoint rules compile to one entry each with few
// candidates; too many overlapping rules are refused naming the rule.
func TestManyRules(t *testing.T) {
	p := &policy.Policy{}
	for i := 0; i < 1000; i++ {
		p.Egress = append(p.Egress, policy.EgressRule{Action: policy.Deny, CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 13, byte(i / 250), byte(i % 250)}), 32)})
	}
	entries, err := egress.Compile(1, p, nil)
	if err != nil || len(entries) != 1002 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	p = &policy.Policy{}
	for i := 0; i < egress.MaxMatch+1; i++ {
		p.Egress = append(p.Egress, policy.EgressRule{Action: policy.Deny, Ports: []policy.PortRange{{First: uint16(1 + i), Last: uint16(1 + i)}}})
	}
	_, err = egress.Compile(1, p, nil)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("egress[%d]: more than %d rules", egress.MaxMatch, egress.MaxMatch)) {
		t.Fatalf("overlap error = %v", err)
	}
}
