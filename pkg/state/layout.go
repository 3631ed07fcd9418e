package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/cilium/ebpf"
)

// LayoutVersion is the layout of the pinned state this build reads and
// writes: which maps and programs exist, their key and value formats, the
// links each attachment pins. Any change to it bumps this number and
// registers the migration from the older layouts (docs/upgrade.md, "for
// developers"; migrations.go).
//
//	1  every state loaded before the version was recorded (main at 1a53481)
//	2  the layout is recorded (maps/layout); the program table is
//	   maps/program_table (it was maps/cgroup_programs, which builds of
//	   layout 1 need: they refuse a newer state instead of misreading it);
//	   512-byte record heads and 1 KiB chunks; limits and iso_owners not
//	   preallocated; netns-traffic/ for pods; termination shares
//	   sock_owners and the decision counters; one program per hook
//	   (sock_create, sock_release, sock_ops, setsockopt, connect4/6
//	   replace the capabilities' own programs there)
//	3  pods' traffic is counted by the namespace copy's cgroup_skb
//	   programs (two more links in netns/links/); netns-traffic/ and its
//	   tcx links are gone
//	4  publications gain host_addr (a mapping's hostIP), at the end;
//	   the namespace copy's sendmsg4/6 publish to unconnected UDP
//	5  progs/sock_create_unmarked, linked as an attachment's sock_create
//	   when its policy has no mark, priority or DSCP (sockcreate.go); a
//	   build of layout 4 changing such a policy would not relink it
const LayoutVersion = 5

// layoutMapName holds the layout version of the state and the build that
// loaded or last upgraded it. bpffs holds only pins, so it is a map: an
// array of one layoutValue. A state without it has layout 1.
const layoutMapName = "layout"

// upgradeDirName is where portcullisctl upgrade stages the new objects
// (upgrade.go); while it exists the state is between two layouts.
const upgradeDirName = "upgrade"

type layoutValue struct {
	Version uint32
	Build   [124]byte
}

func layoutSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       layoutMapName,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4 + 124,
		MaxEntries: 1,
	}
}

// buildOverride is set with -ldflags "-X .../pkg/state.buildOverride=..."
// by packagers who build outside git.
var buildOverride string

// Build names this build: the module version and VCS revision Go stamped
// into the binary ("(devel)" in tests).
func Build() string {
	if buildOverride != "" {
		return buildOverride
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	build := info.Main.Version
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if rev != "" && !strings.Contains(build, rev[:min(12, len(rev))]) {
		build += " " + rev[:min(12, len(rev))] + modified
	}
	return build
}

// Layout is what a state records about itself.
type Layout struct {
	// Version is the layout version (1 when none is recorded).
	Version int `json:"layoutVersion"`
	// Build loaded (or last upgraded) the state; empty for layout 1.
	Build string `json:"build,omitempty"`
	// Upgrading is set while an upgrade is staged but not finished.
	Upgrading bool `json:"upgrading,omitempty"`
}

// ReadLayout reads the layout a pinned state records, without opening or
// locking it (status and doctor show it for a state Open refuses).
func ReadLayout(dir string) (Layout, error) {
	dir, err := CheckDir(dir)
	if err != nil {
		return Layout{}, err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return Layout{}, ErrNotLoaded
	}
	l := Layout{Version: 1}
	if _, err := os.Stat(filepath.Join(dir, upgradeDirName)); err == nil {
		l.Upgrading = true
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", layoutMapName), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	} else if err != nil {
		return Layout{}, fmt.Errorf("open pinned map %s: %w", layoutMapName, err)
	}
	defer m.Close()
	var v layoutValue
	if err := m.Lookup(uint32(0), &v); err != nil {
		return Layout{}, fmt.Errorf("read the state's layout: %w", err)
	}
	l.Version = int(v.Version)
	l.Build = string(bytes.TrimRight(v.Build[:], "\x00"))
	return l, nil
}

// newLayoutMap creates the layout map recording this build.
func newLayoutMap() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(layoutSpec())
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", layoutMapName, err)
	}
	v := layoutValue{Version: LayoutVersion}
	copy(v.Build[:len(v.Build)-1], Build())
	if err := m.Put(uint32(0), &v); err != nil {
		m.Close()
		return nil, fmt.Errorf("write map %s: %w", layoutMapName, err)
	}
	return m, nil
}

// LayoutError is returned by Open for a state of another layout than this
// build's. Its message is one line saying what to do.
type LayoutError struct {
	Dir   string
	State Layout
}

func (e *LayoutError) Error() string {
	switch {
	case e.State.Upgrading:
		return fmt.Sprintf("state %s is half way through an upgrade to layout %d: run `portcullisctl upgrade` (of this build) to finish it", e.Dir, LayoutVersion)
	case e.State.Version < LayoutVersion:
		return fmt.Sprintf("state %s has layout %d, this build needs %d: run `portcullisctl upgrade`", e.Dir, e.State.Version, LayoutVersion)
	default:
		return fmt.Sprintf("state %s has layout %d (build %s), newer than this build's %d: use that build's tools (docs/upgrade.md: rolling back)", e.Dir, e.State.Version, orUnknown(e.State.Build), LayoutVersion)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// checkLayout refuses a state of another layout (or one being upgraded).
func checkLayout(dir string) error {
	l, err := ReadLayout(dir)
	if err != nil {
		return err
	}
	if l.Version != LayoutVersion || l.Upgrading {
		return &LayoutError{Dir: dir, State: l}
	}
	return nil
}
