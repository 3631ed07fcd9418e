package dispatch

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { state.RegisterUpgradeHook(upgrade) }

// upgrade follows portcullisctl upgrade (docs/upgrade.md): each
// dispatcher's sk_lookup link gets this build's program, loaded against
// the dispatcher's own pinned maps, with link.Update (the namespace never
// goes without dispatch). A map whose spec changed would need a migration
// here; none has yet. Running it twice is harmless.
func upgrade(s *state.State, from int) error {
	for _, dir := range dispatchers(s) {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
		if err != nil {
			continue // removed with its namespace at the next open
		}
		err = update(dir, l)
		l.Close()
		if err != nil {
			return fmt.Errorf("dispatcher %s: %w", filepath.Base(dir), err)
		}
	}
	return nil
}

func update(dir string, l link.Link) error {
	spec, err := bpfobj.LoadDispatch()
	if err != nil {
		return err
	}
	replace := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range replace {
			m.Close()
		}
	}()
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), nil)
		if err != nil {
			return fmt.Errorf("open pinned dispatch map %s: %w", name, err)
		}
		replace[name] = m
		ms.MaxEntries = m.MaxEntries()
		if err := ms.Compatible(m); err != nil {
			return fmt.Errorf("dispatch map %s changed (%v): it needs a migration (docs/upgrade.md)", name, err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return fmt.Errorf("load the dispatch program: %w", err)
	}
	defer coll.Close()
	err = l.Update(coll.Programs[bpfobj.DispatchProgDispatch])
	if errors.Is(err, unix.ENOLINK) {
		return nil // its namespace is gone
	}
	return err
}
