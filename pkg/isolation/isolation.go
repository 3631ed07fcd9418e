// Package isolation keeps the kernel's record of which attachment owns
// which address (the iso_owners map of bpf/isolation.h), so that the bind
// and sendmsg programs can refuse, in O(1), an address that belongs to
// another container. Addresses are owned per network namespace: two
// containers in two namespaces may have the same address.
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

// Owners is the pinned iso_owners map of a state.
type Owners struct {
	m *ebpf.Map
}

// OpenOwners opens the map pinned in the state directory dir.
func OpenOwners(dir string) (*Owners, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", bpfobj.PortcullisMapIsoOwners), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", bpfobj.PortcullisMapIsoOwners, err)
	}
	return &Owners{m: m}, nil
}

// Close releases the map.
func (o *Owners) Close() { o.m.Close() }

// OwnedError is returned by Claim for an address another attachment
// owns.
type OwnedError struct {
	Addr  netip.Addr
	Owner uint64 // the other attachment's policy key
}

func (e *OwnedError) Error() string {
	return fmt.Sprintf("address %s is owned by another attachment (policy key %d)", e.Addr, e.Owner)
}

// Claim records key as the owner of addrs in the network namespace with
// the given cookie. It claims all or nothing: an address already owned by
// another key is an *OwnedError, and nothing is written.
func (o *Owners) Claim(netns uint64, addrs []netip.Addr, key uint64) error {
	for _, a := range addrs {
		var have uint64
		err := o.m.Lookup(ownerKey(netns, a), &have)
		if err == nil && have != key {
			return &OwnedError{Addr: a, Owner: have}
		} else if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("read %s: %w", bpfobj.PortcullisMapIsoOwners, err)
		}
	}
	for i, a := range addrs {
		if err := o.m.Update(ownerKey(netns, a), key, ebpf.UpdateAny); err != nil {
			o.Release(netns, addrs[:i], key)
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("BPF map %s is full (%d entries): detach unused attachments", bpfobj.PortcullisMapIsoOwners, o.m.MaxEntries())
			}
			return fmt.Errorf("update %s: %w", bpfobj.PortcullisMapIsoOwners, err)
		}
	}
	return nil
}

// Release removes the addresses key owns; an address owned by someone else
// (or no one) is left alone, so Release is idempotent.
func (o *Owners) Release(netns uint64, addrs []netip.Addr, key uint64) {
	for _, a := range addrs {
		var have uint64
		k := ownerKey(netns, a)
		if o.m.Lookup(k, &have) == nil && have == key {
			o.m.Delete(k)
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
