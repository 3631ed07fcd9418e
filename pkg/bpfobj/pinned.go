package bpfobj

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// OpenPinned opens the maps pinned under stateDir/maps, each by its name
// into its destination. On failure it closes what it opened and names the
// map that is missing.
func OpenPinned(stateDir string, maps map[string]**ebpf.Map) error {
	for name, dst := range maps {
		m, err := LoadPinnedMap(filepath.Join(stateDir, "maps", name))
		if err != nil {
			for _, opened := range maps {
				if *opened != nil {
					(*opened).Close()
					*opened = nil
				}
			}
			return fmt.Errorf("open pinned map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", name, err)
		}
		*dst = m
	}
	return nil
}
