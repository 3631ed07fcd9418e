package state_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// A state this build cannot read (here: a map of its layout is missing, as
// with a state pinned by another version) is still removed by unload
// --force, and its links come off the cgroup: every "cannot open" error
// tells the operator to do exactly that.
func TestUnloadForceRemovesAnUnreadableState(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "unreadable")
	testenv.Attach(t, dir, "unreadable", cg.Path, `{"allowedPorts": ["11900"]}`, "")
	if out := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); strings.TrimSpace(out) == "" {
		t.Fatal("the attach left no program on the cgroup")
	}
	if err := os.Remove(filepath.Join(dir, "maps", "policies")); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Open(dir, false); err == nil {
		t.Fatal("a state without its policies map opened")
	}
	if err := state.Unload(dir, false); err == nil || !strings.Contains(err.Error(), "unload --force") {
		t.Fatalf("unload without --force: %v, want a refusal naming --force", err)
	}
	if err := state.Unload(dir, true); err != nil {
		t.Fatalf("unload --force: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state folder still there: %v", err)
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); strings.TrimSpace(out) != "" {
		t.Fatalf("programs still on the cgroup after unload --force:\n%s", out)
	}
}
