package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Dispatch is one socket-dispatch binding a container owns (docs/dispatch.md):
// traffic for protocol to any address of prefix on any of ports goes to the
// socket the container registers under label.
type Dispatch struct {
	Label    string   `json:"label"`
	Protocol Protocol `json:"protocol"`
	Prefix   string   `json:"prefix"`
	Ports    string   `json:"ports"`
}

// CheckDispatchLabel says what is wrong with a dispatch label.
func CheckDispatchLabel(label string) error {
	if !IsServiceName(label) {
		return fmt.Errorf("label %q must be 1-63 letters, digits, _ . - (starting with a letter or digit)", label)
	}
	return nil
}

// ParseDispatchProtocol accepts "tcp" or "udp".
func ParseDispatchProtocol(s string) (Protocol, error) {
	p := Protocol(strings.ToLower(strings.TrimSpace(s)))
	if p != TCP && p != UDP {
		return "", fmt.Errorf("protocol %q is not tcp or udp", s)
	}
	return p, nil
}

// ParseDispatchPrefix accepts an IPv4 or IPv6 prefix ("127.0.7.0/24",
// "fd00:7::/64") or a single address. Host bits must be zero, so a typo
// never widens or narrows a binding silently.
func ParseDispatchPrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("prefix %q: zones are not supported", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("prefix %q is not an address or ADDR/BITS prefix", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("prefix %q: write IPv4 prefixes as IPv4", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("prefix %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// ParseDispatchPorts accepts "N", "N-M" or "0-65535" (every port).
func ParseDispatchPorts(s string) (first, last uint16, err error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("ports %q: want N, N-M or 0-65535", s)
	}
	b := a
	if isRange {
		if b, err = strconv.ParseUint(strings.TrimSpace(hi), 10, 16); err != nil {
			return 0, 0, fmt.Errorf("ports %q: want N, N-M or 0-65535", s)
		}
	}
	if b < a {
		return 0, 0, fmt.Errorf("ports %q: end is below start", s)
	}
	if b == 0 {
		return 0, 0, fmt.Errorf("ports %q: port 0 alone is no port; use 0-65535 for every port", s)
	}
	return uint16(a), uint16(b), nil
}

// validateDispatch checks and normalises the dispatch entries.
func (p *Policy) validateDispatch() error {
	for i := range p.Dispatch {
		d := &p.Dispatch[i]
		field := fmt.Sprintf("dispatch[%d]", i)
		if err := CheckDispatchLabel(d.Label); err != nil {
			return fmt.Errorf("%s.label: %w", field, err)
		}
		proto, err := ParseDispatchProtocol(string(d.Protocol))
		if err != nil {
			return fmt.Errorf("%s.protocol: %w", field, err)
		}
		d.Protocol = proto
		prefix, err := ParseDispatchPrefix(d.Prefix)
		if err != nil {
			return fmt.Errorf("%s.prefix: %w", field, err)
		}
		d.Prefix = prefix.String()
		first, last, err := ParseDispatchPorts(d.Ports)
		if err != nil {
			return fmt.Errorf("%s.ports: %w", field, err)
		}
		d.Ports = PortRange{First: first, Last: last}.String()
		for j := 0; j < i; j++ {
			if p.Dispatch[j] == *d {
				return fmt.Errorf("%s: the same binding as dispatch[%d]", field, j)
			}
		}
	}
	return nil
}
