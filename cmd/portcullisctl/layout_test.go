package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// status and doctor show the state's layout and this build's; with a
// state of layout 1 (no record) status, attach and load refuse with the
// one line naming portcullisctl upgrade.
func TestStatusShowsLayoutsAndOlderStatesAreRefused(t *testing.T) {
	dir := testenv.StateDir(t)
	mustRun(t, "load", "--state-dir", dir)
	out := mustRun(t, "status", "--state-dir", dir)
	this := fmt.Sprintf("layout %d", state.LayoutVersion)
	if !strings.Contains(out, "state "+this+" (") || !strings.Contains(out, "this build: "+this+" (") {
		t.Fatalf("status without both layouts:\n%s", out)
	}
	if out := mustRun(t, "doctor", "--state-dir", dir); !strings.Contains(out, "this build: "+this) {
		t.Fatalf("doctor without the layouts:\n%s", out)
	}
	if err := os.Remove(filepath.Join(dir, "maps", "layout")); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "status", "--state-dir", dir)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("has layout 1, this build needs %d: run `portcullisctl upgrade`", state.LayoutVersion)) {
		t.Fatalf("status of a layout-1 state: %v", err)
	}
	if !strings.Contains(out, "state layout 1 (build not recorded); this build: "+this) {
		t.Fatalf("status of a layout-1 state shows:\n%s", out)
	}
	cg := testenv.Cgroup(t, "layout")
	for _, args := range [][]string{
		{"attach", "--state-dir", dir, "--cgroup", cg.Path, "--id", "l1", "--policy", writeFile(t, "p.json", `{"allowedPorts": ["9000"]}`)},
		{"load", "--state-dir", dir},
	} {
		if _, err := run(t, args...); err == nil || !strings.Contains(err.Error(), "run `portcullisctl upgrade`") {
			t.Errorf("%s on a layout-1 state: %v", args[0], err)
		}
	}
}
