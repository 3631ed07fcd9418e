// Package publish writes host-port publications for containers with a
// network namespace of their own (bpf/publish.h): a host-local client's
// connect to a published host port on loopback or one of the host's
// addresses is sent to the container's address and port at the socket
// layer. A host port is published once per host namespace: a second
// container asking for it is refused with the name of the first.
package publish

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Maps are a state's publishing maps.
type Maps struct {
	pubs, hostAddrs *ebpf.Map
}

// Open opens the publishing maps pinned in the state at dir.
func Open(dir string) (*Maps, error) {
	m := &Maps{}
	for name, dst := range map[string]**ebpf.Map{
		bpfobj.PortcullisMapPublications: &m.pubs,
		bpfobj.PortcullisMapHostAddrs:    &m.hostAddrs,
	} {
		mp, err := bpfobj.LoadPinnedMap(filepath.Join(dir, "maps", name))
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w (state from an older version? run portcullisctl unload --force && portcullisctl load)", name, err)
		}
		*dst = mp
	}
	return m, nil
}

// Close releases the maps.
func (m *Maps) Close() {
	for _, mp := range []*ebpf.Map{m.pubs, m.hostAddrs} {
		if mp != nil {
			mp.Close()
		}
	}
}

// Request publishes a container's port mappings.
type Request struct {
	// HostNetNS is the cookie of the namespace the ports are published
	// in (the runtime's: the host's), HostAddrs its addresses.
	HostNetNS uint64
	HostAddrs []netip.Addr
	// Owner is the container's policy key; Addr4 and Addr6 its addresses
	// (either may be invalid).
	Owner        uint64
	Addr4, Addr6 netip.Addr
	Mappings     []policy.PortMapping
}

// Publish writes every mapping of r, or none: a host port another owner
// has published already is an error naming it (ownerName turns a policy
// key into an attachment id).
func (m *Maps) Publish(r Request, ownerName func(uint64) string) error {
	if len(r.Mappings) == 0 {
		return nil
	}
	val := bpfobj.PortcullisPublication{Owner: r.Owner}
	if r.Addr4.IsValid() {
		val.Addr4 = words(netip.AddrFrom16(r.Addr4.As16()))
	}
	if r.Addr6.IsValid() {
		val.Addr6 = words(r.Addr6)
	}
	var done []bpfobj.PortcullisPublishKey
	undo := func() {
		for i := range done {
			m.pubs.Delete(&done[i])
		}
	}
	for _, pm := range r.Mappings {
		key := bpfobj.PortcullisPublishKey{Netns: r.HostNetNS, Port: pm.HostPort, Protocol: pm.Protocol.Number()}
		var old bpfobj.PortcullisPublication
		if err := m.pubs.Lookup(&key, &old); err == nil && old.Owner != r.Owner {
			undo()
			return fmt.Errorf("host port %d/%s is already published by %s: choose another hostPort", pm.HostPort, protoName(pm.Protocol), ownerName(old.Owner))
		}
		v := val
		v.Port = pm.ContainerPort
		if pm.HostIP != "" {
			// Validated by the policy; unspecified means any address.
			if ip, err := netip.ParseAddr(pm.HostIP); err == nil && !ip.IsUnspecified() {
				v.HostAddr = words(netip.AddrFrom16(ip.As16()))
			}
		}
		if err := m.pubs.Update(&key, &v, ebpf.UpdateAny); err != nil {
			undo()
			return fmt.Errorf("publish host port %d: %w", pm.HostPort, err)
		}
		done = append(done, key)
	}
	for _, a := range r.HostAddrs {
		key := bpfobj.PortcullisFrontendKey{Addr: words(netip.AddrFrom16(a.As16()))}
		if err := m.hostAddrs.Update(&key, &r.HostNetNS, ebpf.UpdateAny); err != nil {
			undo()
			return fmt.Errorf("host address %s: %w", a, err)
		}
	}
	return nil
}

// Unpublish removes an owner's publications, and the host addresses of a
// namespace left with none.
func (m *Maps) Unpublish(owner uint64) error {
	var (
		key  bpfobj.PortcullisPublishKey
		val  bpfobj.PortcullisPublication
		mine []bpfobj.PortcullisPublishKey
	)
	inUse := map[uint64]bool{}
	gone := map[uint64]bool{}
	iter := m.pubs.Iterate()
	for iter.Next(&key, &val) {
		if val.Owner == owner {
			mine = append(mine, key)
			gone[key.Netns] = true
		} else {
			inUse[key.Netns] = true
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	var errs []error
	for i := range mine {
		if err := m.pubs.Delete(&mine[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	var (
		addr  bpfobj.PortcullisFrontendKey
		netns uint64
		stale []bpfobj.PortcullisFrontendKey
	)
	iter = m.hostAddrs.Iterate()
	for iter.Next(&addr, &netns) {
		if gone[netns] && !inUse[netns] {
			stale = append(stale, addr)
		}
	}
	for i := range stale {
		m.hostAddrs.Delete(&stale[i])
	}
	return errors.Join(append(errs, iter.Err())...)
}

// HostAddrs lists the addresses of the caller's network namespace.
func HostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// words is an address as the kernel side holds it: 16 bytes in network
// order, read as four native-endian words.
func words(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i : 4*i+4])
	}
	return w
}

func protoName(p policy.Protocol) string {
	if p == "" {
		return "tcp"
	}
	return string(p)
}
