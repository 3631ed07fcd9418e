// Package services resolves service frontends to backends at connect time.
// It owns the control-plane side of bpf/services.h: it writes each
// service's frontends and backend slots, and reads the port registry that
// the sockops (TCP listen), post_bind (UDP) and sock_release programs keep.
//
// A backend is either static (an address:port the operator gave) or a
// provider: an attached container whose policy says it provides the
// service on a port. A provider's slot names its cgroup and port; the
// kernel picks it only while the registry shows a socket of that cgroup
// listening (TCP) or bound (UDP) on that port, and connects to the
// address the socket is bound to.
package services

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Endpoint is an address, port and protocol, written "ADDR:PORT[/PROTO]"
// ("[ADDR]:PORT" for IPv6); the protocol defaults to tcp.
type Endpoint struct {
	Addr     netip.AddrPort
	Protocol policy.Protocol
}

// ParseEndpoint parses "ADDR:PORT[/tcp|udp]".
func ParseEndpoint(s string) (Endpoint, error) {
	addr, proto, _ := strings.Cut(strings.TrimSpace(s), "/")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%q is not ADDR:PORT[/PROTO] ([ADDR]:PORT for IPv6)", s)
	}
	if ap.Port() == 0 {
		return Endpoint{}, fmt.Errorf("%q: port must be 1-65535", s)
	}
	if ap.Addr().Zone() != "" || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
		return Endpoint{}, fmt.Errorf("%q: not a usable unicast address", s)
	}
	e := Endpoint{
		Addr:     netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		Protocol: policy.Protocol(strings.ToLower(proto)),
	}
	if e.Protocol == "" {
		e.Protocol = policy.TCP
	}
	if e.Protocol != policy.TCP && e.Protocol != policy.UDP {
		return Endpoint{}, fmt.Errorf("%q: protocol must be tcp or udp", s)
	}
	return e, nil
}

func (e Endpoint) String() string { return fmt.Sprintf("%s/%s", e.Addr, e.Protocol) }

// MarshalJSON writes the string form.
func (e Endpoint) MarshalJSON() ([]byte, error) { return json.Marshal(e.String()) }

// UnmarshalJSON reads the string form.
func (e *Endpoint) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("an endpoint is a string \"ADDR:PORT[/PROTO]\", got %s", data)
	}
	parsed, err := ParseEndpoint(s)
	if err != nil {
		return err
	}
	*e = parsed
	return nil
}

// ValidateName checks a service name: it keys a 64-byte kernel map entry.
func ValidateName(name string) error {
	if !policy.IsServiceName(name) {
		return fmt.Errorf("service name %q: must be 1-63 letters, digits, _ . - (starting with a letter or digit)", name)
	}
	return nil
}

// Provider is one attachment's promise to serve a service on a port.
type Provider struct {
	Attachment string `json:"attachment"`
	CgroupID   uint64 `json:"cgroupId"`
	Service    string `json:"service"`
	// Port is the port the container's socket is bound to, after the
	// policy's port mappings.
	Port     uint16          `json:"port"`
	Protocol policy.Protocol `json:"protocol"`
}

// ProvidersOf lists what an attachment's policy provides.
func ProvidersOf(attachment string, cgroupID uint64, p *policy.Policy) []Provider {
	var list []Provider
	for _, pr := range p.Provides {
		port := pr.Port
		for _, m := range p.PortMappings {
			if m.ContainerPort == pr.Port && m.Protocol == pr.Protocol {
				port = m.HostPort
			}
		}
		list = append(list, Provider{attachment, cgroupID, pr.Service, port, pr.Protocol})
	}
	return list
}

// Service is a service as the maps hold it.
type Service struct {
	Name      string     `json:"name"`
	ID        uint32     `json:"id"`
	Frontends []Endpoint `json:"frontends"`
	Backends  []Backend  `json:"backends"`
	// DeclaredBy is the other host whose declaration this host applies
	// (portcullisctl sync); empty for a service declared here.
	DeclaredBy string `json:"declaredBy,omitempty"`
}

// Backend is one backend slot and whether the kernel would pick it now.
type Backend struct {
	// Kind is "static", "remote" (a live backend of another host, written
	// by portcullisctl sync) or "provider".
	Kind string `json:"kind"`
	// Node is the host a remote backend lives on.
	Node string `json:"node,omitempty"`
	// Endpoint is the static address, or where the provider listens
	// (its bound address; absent while it does not listen).
	Endpoint *Endpoint `json:"endpoint,omitempty"`
	// Provider backends: the attachment and its port.
	Attachment string          `json:"attachment,omitempty"`
	CgroupID   uint64          `json:"cgroupId,omitempty"`
	Port       uint16          `json:"port,omitempty"`
	Protocol   policy.Protocol `json:"protocol"`
	Live       bool            `json:"live"`
}

// Declaration is a service as services.d files and the CNI conf declare
// it: {"name": "db", "frontends": ["127.0.0.1:5432"], "backends": [...]}.
// Backends here are static; containers join through their policy's
// "provides".
type Declaration struct {
	Name      string     `json:"name"`
	Frontends []Endpoint `json:"frontends"`
	Backends  []Endpoint `json:"backends,omitempty"`
}

// Validate checks a declaration.
func (d *Declaration) Validate() error {
	if err := ValidateName(d.Name); err != nil {
		return err
	}
	if len(d.Frontends) == 0 {
		return fmt.Errorf("service %s: needs at least one frontend", d.Name)
	}
	seen := map[Endpoint]bool{}
	for _, e := range append(append([]Endpoint{}, d.Frontends...), d.Backends...) {
		if seen[e] {
			return fmt.Errorf("service %s: %s is listed twice", d.Name, e)
		}
		seen[e] = true
	}
	return nil
}
