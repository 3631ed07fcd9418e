package state_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// indexEntries counts the entries of the pinned attachment index.
func indexEntries(t *testing.T, dir string) int {
	t.Helper()
	out := testenv.Run(t, "bpftool", "-j", "map", "dump", "pinned", filepath.Join(dir, "maps", "attachment_keys"))
	return strings.Count(out, `"key"`)
}

func TestIndexFollowsAttachAndDetach(t *testing.T) {
	dir := testenv.StateDir(t)
	a, b := testenv.Cgroup(t, "ia"), testenv.Cgroup(t, "ib")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id, path := range map[string]string{"ia": a.Path, "ib": b.Path} {
		if _, err := s.Attach(state.AttachRequest{ID: id, Cgroup: path}); err != nil {
			t.Fatal(err)
		}
	}
	for id, cg := range map[string]uint64{"ia": a.ID, "ib": b.ID} {
		if got, err := s.AttachmentOfCgroup(cg); err != nil || got != id {
			t.Errorf("AttachmentOfCgroup(%d) = %q, %v; want %q", cg, got, err, id)
		}
	}
	// A refused attach (an address not on this host) leaves the index as
	// it was.
	c := testenv.Cgroup(t, "ic")
	if _, err := s.Attach(state.AttachRequest{ID: "ic", Cgroup: c.Path, Policy: mustParse(t, `{"addresses":["192.0.2.11"]}`)}); err == nil {
		t.Fatal("attach with a foreign address succeeded")
	}
	if got, _ := s.AttachmentOfCgroup(c.ID); got != "" {
		t.Errorf("refused attach left index entry %q", got)
	}
	if n := indexEntries(t, dir); n != 2 {
		t.Errorf("index has %d entries, want 2", n)
	}
	if err := s.Detach("ia"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.AttachmentOfCgroup(a.ID); got != "" {
		t.Errorf("detached cgroup still indexed as %q", got)
	}
	// The freed cgroup can be attached again, under another id.
	if _, err := s.Attach(state.AttachRequest{ID: "ia2", Cgroup: a.Path}); err != nil {
		t.Fatalf("re-attach after detach: %v", err)
	}
	for _, id := range []string{"ia2", "ib"} {
		if err := s.Detach(id); err != nil {
			t.Fatal(err)
		}
	}
	if n := indexEntries(t, dir); n != 0 {
		t.Errorf("index has %d entries after detaching all, want 0", n)
	}
}

// The namespace list holds each recorded namespace path once, while an
// attachment records it.
func TestNetNSPathsFollowAttachments(t *testing.T) {
	dir := testenv.StateDir(t)
	ns := testenv.NewNetNS(t)
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range []string{"na", "nb", "host"} {
		netns := ns.Path
		if id == "host" {
			netns = ""
		}
		if _, err := s.Attach(state.AttachRequest{ID: id, Cgroup: testenv.Cgroup(t, id).Path, NetNS: netns}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(paths ...string) {
		t.Helper()
		got, err := s.NetNSPaths()
		if err != nil || strings.Join(got, ",") != strings.Join(paths, ",") {
			t.Errorf("NetNSPaths = %v, %v; want %v", got, err, paths)
		}
	}
	want(ns.Path)
	if _, err := s.Attach(state.AttachRequest{ID: "long", Cgroup: testenv.Cgroup(t, "long").Path, NetNS: "/run/netns/" + strings.Repeat("x", 300)}); err == nil || !strings.Contains(err.Error(), "at most 255 characters") {
		t.Errorf("attach with a 311-character netns path: %v", err)
	}
	for _, id := range []string{"na", "host"} {
		if err := s.Detach(id); err != nil {
			t.Fatal(err)
		}
	}
	want(ns.Path)
	if err := s.Detach("nb"); err != nil {
		t.Fatal(err)
	}
	want()
}
