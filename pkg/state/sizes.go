package state

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// Sizes caps the maps of a state (their max_entries), set when it is
// loaded. A zero field keeps the default of bpf/. docs/scale.md says what
// each map costs.
type Sizes struct {
	// Containers: attachments (policies, records, the index, connection
	// limits, traffic and decision counters) and port mapping entries (two
	// per mapping). Default 65536.
	Containers uint32
	// Backends: service backend slots (svc_backends). Default 131072.
	Backends uint32
	// Frontends: service frontend addresses (svc_frontends). Default 65536.
	Frontends uint32
	// Sockets: bound sockets of attached containers, the port registry
	// (svc_registry, svc_listeners). Default 131072.
	Sockets uint32
	// Peers: sockets connected through a service frontend, TCP and UDP
	// (svc_peers, svc_udp_peers). These are LRU maps, which the kernel
	// always preallocates: about 230 bytes an entry for the two. Default 32768.
	Peers uint32
}

// sizeLimits bound every size: an LRU map needs a few entries per CPU, and
// beyond 16 million a typo is likelier than a host.
const (
	minSize = 1024
	maxSize = 1 << 24
)

func (z Sizes) maps() []struct {
	what  string
	n     uint32
	names []string
} {
	return []struct {
		what  string
		n     uint32
		names []string
	}{
		{"containers", z.Containers, []string{bpfobj.PortcullisMapPolicies, bpfobj.PortcullisMapPortmaps, bpfobj.PortcullisMapAttachments, bpfobj.PortcullisMapLimits,
			bpfobj.PortcullisMapTraffic, bpfobj.PortcullisMapDecisions, bpfobj.PortcullisMapDecisionsUser}},
		{"backends", z.Backends, []string{bpfobj.PortcullisMapSvcBackends}},
		{"frontends", z.Frontends, []string{bpfobj.PortcullisMapSvcFrontends}},
		{"sockets", z.Sockets, []string{bpfobj.PortcullisMapSvcRegistry, bpfobj.PortcullisMapSvcListeners}},
		{"peers", z.Peers, []string{bpfobj.PortcullisMapSvcPeers, bpfobj.PortcullisMapSvcUdpPeers}},
	}
}

// Validate checks every size that is set.
func (z Sizes) Validate() error {
	for _, m := range z.maps() {
		if m.n != 0 && (m.n < minSize || m.n > maxSize) {
			return fmt.Errorf("max-%s %d: must be between %d and %d", m.what, m.n, minSize, maxSize)
		}
	}
	return nil
}

// apply sets the sizes on the collection spec before it is loaded.
func (z Sizes) apply(spec *ebpf.CollectionSpec) error {
	if err := z.Validate(); err != nil {
		return err
	}
	for _, m := range z.maps() {
		if m.n == 0 {
			continue
		}
		for _, name := range m.names {
			ms, ok := spec.Maps[name]
			if !ok {
				return fmt.Errorf("map %s is not in the BPF object", name)
			}
			ms.MaxEntries = m.n
		}
	}
	return nil
}

// MapUsage is what one pinned map of a state costs.
type MapUsage struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	MaxEntries uint32 `json:"maxEntries"`
	// Memlock is the kernel's account of the map's memory, in bytes
	// (what bpftool map show calls memlock): all of it for preallocated
	// maps, the elements in use for the others.
	Memlock uint64 `json:"memlockBytes"`
}

// MapMemory lists the pinned maps of the state and their memory.
func (s *State) MapMemory() ([]MapUsage, error) {
	paths, err := filepath.Glob(filepath.Join(s.dir, "maps", "*"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.TerminationDir(), bpfobj.TerminateMapTargets)); err == nil {
		paths = append(paths, filepath.Join(s.TerminationDir(), bpfobj.TerminateMapTargets))
	}
	var list []MapUsage
	for _, path := range paths {
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", path, err)
		}
		memlock, _ := info.Memlock()
		list = append(list, MapUsage{Name: filepath.Base(path), Type: info.Type.String(), MaxEntries: info.MaxEntries, Memlock: memlock})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}
