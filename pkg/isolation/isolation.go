// Package isolation keeps the kernel's record of which addresses belong
// to attachments (the iso_owners map of bpf/isolation.h), so that the bind
// and sendmsg programs can refuse, in O(1), an address that belongs to
// another container. An address is owned per network namespace (two
// containers in two namespaces may have the same one) and counted: the
// containers of a pod list the same address, and it stays owned until the
// last of them is detached.
package isolation

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// Owners is the pinned iso_owners map of a state. Callers hold the
// state's exclusive lock, which serialises the counts' updates.
type Owners struct {
	m *ebpf.Map
}

// OpenOwners opens the map pinned in the state directory dir.
func OpenOwners(dir string) (*Owners, error) {
	m, err := bpfobj.LoadPinnedMap(filepath.Join(dir, "maps", bpfobj.PortcullisMapIsoOwners))
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", bpfobj.PortcullisMapIsoOwners, err)
	}
	return &Owners{m: m}, nil
}

// Close releases the map.
func (o *Owners) Close() { o.m.Close() }

// Claim counts one more attachment owning addrs in the network namespace
// with the given cookie. It claims all or nothing.
func (o *Owners) Claim(netns uint64, addrs []netip.Addr) error {
	for i, a := range addrs {
		k := ownerKey(netns, a)
		var n uint64
		if err := o.m.Lookup(k, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			o.Release(netns, addrs[:i])
			return fmt.Errorf("read %s: %w", bpfobj.PortcullisMapIsoOwners, err)
		}
		if err := o.m.Update(k, n+1, ebpf.UpdateAny); err != nil {
			o.Release(netns, addrs[:i])
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("BPF map %s is full (%d entries): detach unused attachments", bpfobj.PortcullisMapIsoOwners, o.m.MaxEntries())
			}
			return fmt.Errorf("update %s: %w", bpfobj.PortcullisMapIsoOwners, err)
		}
	}
	return nil
}

// Release counts one attachment fewer owning addrs; an address nobody owns
// any more is removed. An address already gone is left alone.
func (o *Owners) Release(netns uint64, addrs []netip.Addr) {
	for _, a := range addrs {
		k := ownerKey(netns, a)
		var n uint64
		if o.m.Lookup(k, &n) != nil {
			continue
		}
		if n <= 1 {
			o.m.Delete(k)
		} else {
			o.m.Update(k, n-1, ebpf.UpdateExist)
		}
	}
}

func ownerKey(netns uint64, a netip.Addr) *bpfobj.PortcullisOwnerKey {
	k := &bpfobj.PortcullisOwnerKey{Netns: netns}
	raw := a.As16() // IPv4 becomes ::ffff:a.b.c.d, as the programs see it
	for i := range k.Addr {
		// The kernel holds network-order bytes in each __u32.
		k.Addr[i] = binary.NativeEndian.Uint32(raw[4*i : 4*i+4])
	}
	return k
}
