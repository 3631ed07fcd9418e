package state_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// A state records this build's layout; a state without the record (every
// state loaded before it existed, layout 1) or with another version is
// refused by Open with one line saying what to do, and unload --force
// still removes it.
func TestLayoutRecordedAndOtherLayoutsRefused(t *testing.T) {
	dir := testenv.StateDir(t)
	if _, err := state.Load(dir); err != nil {
		t.Fatal(err)
	}
	l, err := state.ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.Version != state.LayoutVersion || l.Build != state.Build() || l.Upgrading {
		t.Fatalf("layout %+v, want version %d build %q", l, state.LayoutVersion, state.Build())
	}
	s, err := state.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	layoutPin := filepath.Join(dir, "maps", "layout")
	m, err := ebpf.LoadPinnedMap(layoutPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// A newer layout.
	var v struct {
		Version uint32
		Build   [124]byte
	}
	v.Version = state.LayoutVersion + 1
	copy(v.Build[:], "v9.9.9")
	if err := m.Put(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	_, err = state.Open(dir, true)
	var lerr *state.LayoutError
	if !errors.As(err, &lerr) || !strings.Contains(err.Error(), "newer than this build") || !strings.Contains(err.Error(), "v9.9.9") {
		t.Fatalf("open of a newer layout: %v", err)
	}
	// No record: layout 1.
	if err := m.Unpin(); err != nil {
		t.Fatal(err)
	}
	_, err = state.Open(dir, true)
	want := "has layout 1, this build needs " + strconv.Itoa(state.LayoutVersion) + ": run `portcullisctl upgrade`"
	if !errors.As(err, &lerr) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("open of a layout-1 state: %v, want one line with %q", err, want)
	}
	if l, err := state.ReadLayout(dir); err != nil || l.Version != 1 || l.Build != "" {
		t.Fatalf("layout of a state without the record: %+v %v", l, err)
	}
	// An unfinished upgrade.
	if err := os.Mkdir(filepath.Join(dir, "upgrade"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Open(dir, false); err == nil || !strings.Contains(err.Error(), "half way through an upgrade") {
		t.Fatalf("open during an upgrade: %v", err)
	}
	if err := state.Unload(dir, false); err == nil || !strings.Contains(err.Error(), "unload --force") {
		t.Fatalf("unload without --force: %v", err)
	}
}
