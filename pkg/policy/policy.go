// Package policy defines the portcullis policy document: what one container
// (or any cgroup) may bind, which address it is pinned to, and how its ports
// are remapped. The same document is accepted by `portcullisctl attach
// --policy`, the CNI plugin's conf and the OCI hook's annotations.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/input"
)

// MaxPortRanges is how many allowedPorts entries the kernel side holds
// (MAX_PORT_RANGES in bpf/common.h).
const MaxPortRanges = 16

// Policy is one container's policy. The zero value allows everything and
// pins nothing.
type Policy struct {
	// Addresses holds at most one IPv4 and one IPv6 address: wildcard binds
	// are pinned to them and outgoing connections leave from them.
	Addresses []netip.Addr `json:"addresses,omitempty"`
	// AllowedPorts limits the ports the container may bind. Empty means
	// any port.
	AllowedPorts []PortRange `json:"allowedPorts,omitempty"`
	// PortMappings rewrite a containerPort to a hostPort at bind time; the
	// shape is that of the CNI portMappings capability. For a container
	// with a network namespace of its own (Published) they publish host
	// ports instead (pkg/publish).
	PortMappings []PortMapping `json:"portMappings,omitempty"`
	// Published says the port mappings publish host ports (the CNI
	// plugin's containers): a hostIP is then one of the host's addresses,
	// which the policy cannot know, not one of the policy's. Not part of
	// the document.
	Published bool `json:"-"`
	// Provides makes the container a backend of services: it is picked
	// for a service once it listens on the port (see docs/services.md).
	Provides []Provide `json:"provides,omitempty"`
	// ConnectionLimits caps live outgoing connections (docs/connection-limits.md).
	ConnectionLimits *ConnectionLimits `json:"connectionLimits,omitempty"`
	// Groups label the container; egress rules of others match its
	// addresses by group (docs/egress.md).
	Groups []string `json:"groups,omitempty"`
	// Egress rules are evaluated at connect and sendmsg, first match wins;
	// EgressDefault ("allow", the default, or "deny") applies when none
	// matches.
	Egress        []EgressRule `json:"egress,omitempty"`
	EgressDefault string       `json:"egressDefault,omitempty"`
	// Dispatch lists the socket-dispatch bindings the container owns
	// (see docs/dispatch.md).
	Dispatch []Dispatch `json:"dispatch,omitempty"`
	// AllowRawSockets lets a container with addresses open raw and ICMP
	// datagram sockets, which are refused by default: they never pass the
	// bind hook, so they could use any source address. Packet sockets pass
	// no hook at all: without it the OCI hook refuses a host-network
	// container that keeps CAP_NET_RAW (pkg/packetcaps).
	AllowRawSockets bool `json:"allowRawSockets,omitempty"`
	// Mark, Priority and DSCP are set on every socket the container
	// creates: SO_MARK, SO_PRIORITY, and the DSCP (0-63) of IP_TOS and
	// IPV6_TCLASS (see docs/metrics.md).
	Mark     *uint32 `json:"mark,omitempty"`
	Priority *uint32 `json:"priority,omitempty"`
	DSCP     *uint8  `json:"dscp,omitempty"`
}

// MaxDSCP is the largest differentiated services code point (6 bits).
const MaxDSCP = 63

// Provide says the container serves a service on one of its ports (the
// port it binds; a port mapping, if any, is applied on top).
type Provide struct {
	Service  string   `json:"service"`
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol,omitempty"`
}

// serviceNameChars are the characters of a service name after its first.
// The length is checked apart: a {0,62} repetition compiles into 62 copies,
// which every short-lived CNI and hook process paid at start.
var serviceNameChars = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// IsServiceName tells whether name is a service name pkg/services accepts:
// 1-63 letters, digits, _ . - starting with a letter or digit (names key a
// kernel map of 64 bytes).
func IsServiceName(name string) bool {
	return len(name) <= 63 && serviceNameChars.MatchString(name)
}

// PortRange is an inclusive range of ports, written "9090" or "18000-18010"
// (a JSON number is accepted for a single port).
type PortRange struct {
	First, Last uint16
}

// PortMapping maps a container port to a host port for one protocol.
type PortMapping struct {
	ContainerPort uint16   `json:"containerPort"`
	HostPort      uint16   `json:"hostPort"`
	Protocol      Protocol `json:"protocol,omitempty"`
	// HostIP, when set and not 0.0.0.0 or ::, must be one of the policy's
	// addresses (a bind-time remap); for a published port it narrows the
	// publication to that host address.
	HostIP string `json:"hostIP,omitempty"`
}

// Protocol is "tcp" or "udp"; empty means tcp.
type Protocol string

// Protocols known to the kernel side.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Number returns the IP protocol number.
func (p Protocol) Number() uint8 {
	if p == UDP {
		return 17
	}
	return 6
}

// Parse reads a policy document, rejecting unknown fields and invalid
// values with an error that names the field.
func Parse(data []byte) (*Policy, error) {
	// encoding/json reads null into an empty policy; a document that
	// says null (an annotation, a file) is a mistake, not "allow all".
	if string(bytes.TrimSpace(data)) == "null" {
		return nil, errors.New("invalid policy: null: a policy is a JSON object ({} allows everything)")
	}
	var p Policy
	if err := DecodeStrict(data, &p); err != nil {
		return nil, fmt.Errorf("invalid policy: %w", err)
	}
	return &p, nil
}

// plain has Policy's fields without its methods, so UnmarshalJSON can
// decode into it without recursing.
type plain Policy

// document is the wire form: the fields whose values need parsing are read
// as raw values first so that errors can name the exact element.
type document struct {
	plain
	Addresses    []string          `json:"addresses,omitempty"`
	AllowedPorts []json.RawMessage `json:"allowedPorts,omitempty"`
	Egress       []json.RawMessage `json:"egress,omitempty"`
}

// UnmarshalJSON decodes strictly (unknown fields are errors wherever the
// policy is embedded) and validates.
func (p *Policy) UnmarshalJSON(data []byte) error {
	var doc document
	if err := DecodeStrict(data, &doc); err != nil {
		return err
	}
	parsed := Policy(doc.plain)
	for i, s := range doc.Addresses {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			if _, perr := netip.ParsePrefix(s); perr == nil {
				return fmt.Errorf("addresses[%d]: %q is a prefix; give a single address", i, s)
			}
			return fmt.Errorf("addresses[%d]: %q is not an IP address", i, s)
		}
		parsed.Addresses = append(parsed.Addresses, a)
	}
	for i, raw := range doc.AllowedPorts {
		var r PortRange
		if err := r.UnmarshalJSON(raw); err != nil {
			return fmt.Errorf("allowedPorts[%d]: %w", i, err)
		}
		parsed.AllowedPorts = append(parsed.AllowedPorts, r)
	}
	for i, raw := range doc.Egress {
		r, err := parseEgressRule(raw, fmt.Sprintf("egress[%d]", i))
		if err != nil {
			return err
		}
		parsed.Egress = append(parsed.Egress, r)
	}
	if err := parsed.Validate(); err != nil {
		return err
	}
	*p = parsed
	return nil
}

// ParseFile reads and parses a policy file.
func ParseFile(path string) (*Policy, error) {
	data, err := input.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// DecodeStrict decodes one JSON value, failing on unknown fields (matched
// exactly, not case-insensitively as encoding/json does) and on trailing
// data, and rewrites encoding/json's errors to name the field. Every
// portcullis document is read with it.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeJSONError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON document")
	}
	return checkExactKeys(data, reflect.TypeOf(v), "")
}

func describeJSONError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return fmt.Errorf("%s: expected %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	case err == io.EOF:
		return errors.New("empty document")
	case err == io.ErrUnexpectedEOF:
		return errors.New("malformed JSON: the document ends early")
	}
	return err
}

// Validate checks the values the JSON types cannot.
func (p *Policy) Validate() error {
	var have4, have6 bool
	for i, a := range p.Addresses {
		field := fmt.Sprintf("addresses[%d]", i)
		switch {
		case !a.IsValid() || a.IsUnspecified():
			return fmt.Errorf("%s: %q is not a usable address", field, a)
		case a.Zone() != "":
			return fmt.Errorf("%s: %q: zones are not supported", field, a)
		case a.Is4() || a.Is4In6():
			if have4 {
				return fmt.Errorf("%s: %s: only one IPv4 address per container", field, a)
			}
			have4 = true
		default:
			if have6 {
				return fmt.Errorf("%s: %s: only one IPv6 address per container", field, a)
			}
			have6 = true
		}
		p.Addresses[i] = a.Unmap()
	}
	if len(p.AllowedPorts) > MaxPortRanges {
		return fmt.Errorf("allowedPorts: %d ranges, at most %d are supported", len(p.AllowedPorts), MaxPortRanges)
	}
	type mapKey struct {
		port  uint16
		proto Protocol
	}
	containerPorts := map[mapKey]bool{}
	hostPorts := map[mapKey]bool{}
	for i := range p.PortMappings {
		m := &p.PortMappings[i]
		field := fmt.Sprintf("portMappings[%d]", i)
		if m.Protocol == "" {
			m.Protocol = TCP
		}
		m.Protocol = Protocol(strings.ToLower(string(m.Protocol)))
		if m.Protocol != TCP && m.Protocol != UDP {
			return fmt.Errorf("%s.protocol: %q is not tcp or udp", field, m.Protocol)
		}
		if m.ContainerPort == 0 {
			return fmt.Errorf("%s.containerPort: must be 1-65535", field)
		}
		if m.HostPort == 0 {
			return fmt.Errorf("%s.hostPort: must be 1-65535", field)
		}
		if m.HostIP != "" {
			ip, err := netip.ParseAddr(m.HostIP)
			if err != nil {
				return fmt.Errorf("%s.hostIP: %q is not an IP address", field, m.HostIP)
			}
			if ip.Zone() != "" {
				return fmt.Errorf("%s.hostIP: %q: zones are not supported", field, m.HostIP)
			}
			if !p.Published && !ip.IsUnspecified() && !p.hasAddress(ip.Unmap()) {
				return fmt.Errorf("%s.hostIP: %s is not one of the policy's addresses", field, ip)
			}
		}
		ck := mapKey{m.ContainerPort, m.Protocol}
		if containerPorts[ck] {
			return fmt.Errorf("%s: containerPort %d/%s is mapped twice", field, m.ContainerPort, m.Protocol)
		}
		containerPorts[ck] = true
		hk := mapKey{m.HostPort, m.Protocol}
		if hostPorts[hk] {
			return fmt.Errorf("%s: hostPort %d/%s is the target of two mappings", field, m.HostPort, m.Protocol)
		}
		hostPorts[hk] = true
	}
	if p.DSCP != nil && *p.DSCP > MaxDSCP {
		return fmt.Errorf("dscp: %d is not a DSCP (0-%d; the TOS byte is dscp<<2)", *p.DSCP, MaxDSCP)
	}
	provided := map[Provide]bool{}
	for i := range p.Provides {
		pr := &p.Provides[i]
		field := fmt.Sprintf("provides[%d]", i)
		if !IsServiceName(pr.Service) {
			return fmt.Errorf("%s.service: %q must be 1-63 letters, digits, _ . - (starting with a letter or digit)", field, pr.Service)
		}
		if pr.Port == 0 {
			return fmt.Errorf("%s.port: must be 1-65535", field)
		}
		pr.Protocol = Protocol(strings.ToLower(string(pr.Protocol)))
		if pr.Protocol == "" {
			pr.Protocol = TCP
		}
		if pr.Protocol != TCP && pr.Protocol != UDP {
			return fmt.Errorf("%s.protocol: %q is not tcp or udp", field, pr.Protocol)
		}
		if provided[*pr] {
			return fmt.Errorf("%s: service %s on %d/%s is listed twice", field, pr.Service, pr.Port, pr.Protocol)
		}
		provided[*pr] = true
	}
	if err := p.validateEgress(); err != nil {
		return err
	}
	return p.validateDispatch()
}

func (p *Policy) hasAddress(a netip.Addr) bool {
	for _, have := range p.Addresses {
		if have == a {
			return true
		}
	}
	return false
}

// Address returns the policy's IPv4 or IPv6 address.
func (p *Policy) Address(v6 bool) (netip.Addr, bool) {
	for _, a := range p.Addresses {
		if a.Is6() == v6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// UnmarshalJSON accepts "N", "N-M" or a JSON number.
func (r *PortRange) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n json.Number
		if json.Unmarshal(data, &n) != nil {
			return fmt.Errorf("port range must be a string like \"8000-8010\" or a number, got %s", data)
		}
		s = n.String()
	}
	parsed, err := ParsePortRange(s)
	if err != nil {
		return err
	}
	*r = parsed
	return nil
}

// MarshalJSON writes the range in its canonical string form.
func (r PortRange) MarshalJSON() ([]byte, error) {
	return json.Marshal(r.String())
}

func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// ParsePortRange parses "N" or "N-M" with 1 <= N <= M <= 65535.
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	lo, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(last); err != nil {
			return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
		}
	}
	if hi < lo {
		return PortRange{}, fmt.Errorf("port range %q: end is below start", s)
	}
	return PortRange{First: lo, Last: hi}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return uint16(n), nil
}
