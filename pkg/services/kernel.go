package services

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// Go mirrors of the structs in bpf/services.h. Addresses are 16 bytes in
// network order (IPv4 as ::ffff:a.b.c.d), ports in host order. The layout
// is checked against the object's BTF in kernel_test.go.

type frontendKey struct {
	Addr     [16]byte
	Port     uint16
	Protocol uint8
	Pad      uint8
}

type frontendVal struct {
	ServiceID uint32
}

type backendKey struct {
	ServiceID uint32
	Index     uint32
}

// Kinds of backend slot.
const (
	kindStatic   = 0
	kindProvider = 1
)

type backendVal struct {
	CgroupID uint64
	Addr     [16]byte
	Port     uint16
	Kind     uint8
	Protocol uint8
	Pad      uint32
}

type listenerKey struct {
	CgroupID uint64
	Port     uint16
	Protocol uint8
	Family   uint8
	Pad      uint32
}

type listenerVal struct {
	Addr [16]byte
	Refs uint32
	Pad  uint32
}

type registration struct {
	CgroupID uint64
	BoundNs  uint64
	Addr     [16]byte
	Port     uint16
	Protocol uint8
	Family   uint8
	Pad      uint32
}

type svcName struct {
	Name [64]byte
}

// Map names in the pinned state (maps/<name>).
const (
	mapFrontends = "svc_frontends"
	mapCounts    = "svc_counts"
	mapBackends  = "svc_backends"
	mapNames     = "svc_names"
	mapRegistry  = "svc_registry"
	mapListeners = "svc_listeners"
	mapDrops     = "svc_drops"
)

// maxServiceID is the size of svc_counts; id 0 is never used.
const maxServiceID = 65535

// Maps are the pinned service maps of one state directory. Callers hold
// the state's exclusive lock while they change them (pkg/state does).
type Maps struct {
	frontends, counts, backends, nameMap, registry, listeners, drops *ebpf.Map

	// The name <-> id table, read once from svc_names.
	ids   map[string]uint32
	names map[uint32]string
	// Node names of remote backends (see remote.go), from the same map.
	nodeIDs   map[string]uint32
	nodeNames map[uint32]string
	// Services declared by another host (adopted.go): service id -> the
	// node id of the declaring host.
	adopted map[uint32]uint32
}

// Open opens the service maps pinned under dir (the state directory).
func Open(dir string) (*Maps, error) {
	m := &Maps{}
	for name, dst := range map[string]**ebpf.Map{
		mapFrontends: &m.frontends, mapCounts: &m.counts, mapBackends: &m.backends,
		mapNames: &m.nameMap, mapRegistry: &m.registry, mapListeners: &m.listeners, mapDrops: &m.drops,
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
	for _, mp := range []*ebpf.Map{m.frontends, m.counts, m.backends, m.nameMap, m.registry, m.listeners, m.drops} {
		if mp != nil {
			mp.Close()
		}
	}
}

// put inserts or replaces an entry; a full map is an error that says which
// map and how big it is, never a silent drop.
func put(m *ebpf.Map, what string, key, value any) error {
	err := m.Update(key, value, ebpf.UpdateAny)
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("the %s map is full (%d entries): remove unused services or backends", what, m.MaxEntries())
	}
	if err != nil {
		return fmt.Errorf("update %s: %w", what, err)
	}
	return nil
}

func del(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// addr16 is the kernel form of an address.
func addr16(a netip.Addr) [16]byte {
	return a.Unmap().As16() // As16 of an IPv4 address is v4-mapped
}

func fromAddr16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}
