package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Limits of the kernel side (bpf/egress.h): ports per rule and rules per
// policy.
const (
	MaxRulePorts   = 8
	MaxEgressRules = 4096
	MaxGroups      = 64
)

// ConnectionLimits caps the container's live outgoing TCP connections and
// connected UDP sockets: per destination address:port (after service
// translation) and in total. Zero means no cap. The connect that would go
// over a cap fails with EAGAIN.
type ConnectionLimits struct {
	PerDestination uint32 `json:"perDestination,omitempty"`
	Total          uint32 `json:"total,omitempty"`
}

// Egress actions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// EgressRule matches a destination of connect(2) or sendmsg(2). Every part
// that is set must match; a rule with none of them matches everything.
type EgressRule struct {
	Action string `json:"action"`
	// CIDR matches the destination address (IPv4 or IPv6).
	CIDR netip.Prefix `json:"cidr,omitzero"`
	// Ports matches the destination port; empty means any.
	Ports []PortRange `json:"ports,omitempty"`
	// Protocol is tcp or udp; empty means both.
	Protocol Protocol `json:"protocol,omitempty"`
	// Group matches a destination address that belongs to an attachment
	// whose policy carries this group.
	Group string `json:"group,omitempty"`
}

// egressRuleDoc is the wire form of a rule, read field by field so that an
// error can name the exact element.
type egressRuleDoc struct {
	Action   string            `json:"action"`
	CIDR     string            `json:"cidr,omitempty"`
	Ports    []json.RawMessage `json:"ports,omitempty"`
	Protocol Protocol          `json:"protocol,omitempty"`
	Group    string            `json:"group,omitempty"`
}

// isGroupName keeps group names short and printable: the rules of a
// service name (IsServiceName), whose regexp has no {0,62} repetition to
// compile at every process start.
func isGroupName(g string) bool { return IsServiceName(g) }

// parseEgressRule reads one rule; field is its name in errors
// ("egress[3]").
func parseEgressRule(data []byte, field string) (EgressRule, error) {
	var doc egressRuleDoc
	if err := DecodeStrict(data, &doc); err != nil {
		return EgressRule{}, fmt.Errorf("%s: %w", field, err)
	}
	r := EgressRule{Action: doc.Action, Protocol: doc.Protocol, Group: doc.Group}
	if doc.CIDR != "" {
		prefix, err := netip.ParsePrefix(strings.TrimSpace(doc.CIDR))
		if err != nil {
			if a, aerr := netip.ParseAddr(doc.CIDR); aerr == nil {
				return r, fmt.Errorf("%s.cidr: %q has no prefix length (write %s/%d)", field, doc.CIDR, a, a.BitLen())
			}
			return r, fmt.Errorf("%s.cidr: %q is not a CIDR prefix", field, doc.CIDR)
		}
		r.CIDR = prefix
	}
	for i, raw := range doc.Ports {
		var pr PortRange
		if err := pr.UnmarshalJSON(raw); err != nil {
			return r, fmt.Errorf("%s.ports[%d]: %w", field, i, err)
		}
		r.Ports = append(r.Ports, pr)
	}
	return r, nil
}

// validate checks and normalises one rule.
func (r *EgressRule) validate(field string) error {
	r.Action = strings.ToLower(r.Action)
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("%s.action: %q must be allow or deny", field, r.Action)
	}
	r.Protocol = Protocol(strings.ToLower(string(r.Protocol)))
	if r.Protocol != "" && r.Protocol != TCP && r.Protocol != UDP {
		return fmt.Errorf("%s.protocol: %q is not tcp or udp", field, r.Protocol)
	}
	if r.CIDR.IsValid() {
		if r.CIDR.Addr().Zone() != "" {
			return fmt.Errorf("%s.cidr: %s: zones are not supported", field, r.CIDR)
		}
		if r.CIDR.Masked() != r.CIDR {
			return fmt.Errorf("%s.cidr: %s has host bits set (did you mean %s?)", field, r.CIDR, r.CIDR.Masked())
		}
		if r.CIDR.Addr().Is4In6() {
			// A v4-mapped prefix is the IPv4 prefix it maps.
			bits := r.CIDR.Bits() - 96
			if bits < 0 {
				return fmt.Errorf("%s.cidr: %s covers more than the IPv4-mapped range", field, r.CIDR)
			}
			r.CIDR = netip.PrefixFrom(r.CIDR.Addr().Unmap(), bits)
		}
	}
	if len(r.Ports) > MaxRulePorts {
		return fmt.Errorf("%s.ports: %d ranges, at most %d are supported", field, len(r.Ports), MaxRulePorts)
	}
	if r.Group != "" && !isGroupName(r.Group) {
		return fmt.Errorf("%s.group: %q must be 1-63 letters, digits, _ . - (starting with a letter or digit)", field, r.Group)
	}
	return nil
}

// validateEgress checks the egress part of a policy.
func (p *Policy) validateEgress() error {
	seen := map[string]bool{}
	for i, g := range p.Groups {
		field := fmt.Sprintf("groups[%d]", i)
		if !isGroupName(g) {
			return fmt.Errorf("%s: %q must be 1-63 letters, digits, _ . - (starting with a letter or digit)", field, g)
		}
		if seen[g] {
			return fmt.Errorf("%s: group %q is listed twice", field, g)
		}
		seen[g] = true
	}
	if len(p.Egress) > MaxEgressRules {
		return fmt.Errorf("egress: %d rules, at most %d are supported", len(p.Egress), MaxEgressRules)
	}
	for i := range p.Egress {
		if err := p.Egress[i].validate(fmt.Sprintf("egress[%d]", i)); err != nil {
			return err
		}
	}
	p.EgressDefault = strings.ToLower(p.EgressDefault)
	switch p.EgressDefault {
	case "", Allow, Deny:
	default:
		return fmt.Errorf("egressDefault: %q must be allow or deny", p.EgressDefault)
	}
	return nil
}

// HasEgress reports whether the policy filters egress at all.
func (p *Policy) HasEgress() bool {
	return len(p.Egress) > 0 || p.EgressDefault == Deny
}

// ReferencedGroups lists the groups the policy carries or its rules name.
func (p *Policy) ReferencedGroups() []string {
	out := append([]string(nil), p.Groups...)
	for _, r := range p.Egress {
		if r.Group != "" {
			out = append(out, r.Group)
		}
	}
	return out
}

// mergeEgress applies one Merge layer's limits, groups and rules: the last
// layer that sets a field wins.
func mergeEgress(out, layer *Policy) {
	if layer.ConnectionLimits != nil {
		limits := *layer.ConnectionLimits
		out.ConnectionLimits = &limits
	}
	if len(layer.Groups) > 0 {
		out.Groups = append([]string(nil), layer.Groups...)
	}
	if len(layer.Egress) > 0 {
		out.Egress = append([]EgressRule(nil), layer.Egress...)
	}
	if layer.EgressDefault != "" {
		out.EgressDefault = layer.EgressDefault
	}
}
