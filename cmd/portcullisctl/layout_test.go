package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// status and doctor show the state's layout and this build's; with a
// state of layout 1 (no record) status, attach and load refuse with the
// one line naming portcullisctl upgrade.
func TestStatusShowsLayoutsAndOlderStatesAreRefused(t *testing.T) {
	dir := testenv.StateDir(t)
	mustRun(t, "load", "--state-dir", dir)
	out := mustRun(t, "status", "--state-dir", dir)
	if !strings.Contains(out, "state layout 2 (") || !strings.Contains(out, "this build: layout 2 (") {
		t.Fatalf("status without both layouts:\n%s", out)
	}
	if out := mustRun(t, "doctor", "--state-dir", dir); !strings.Contains(out, "this build: layout 2") {
		t.Fatalf("doctor without the layouts:\n%s", out)
	}
	if err := os.Remove(filepath.Join(dir, "maps", "layout")); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "status", "--state-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "has layout 1, this build needs 2: run `portcullisctl upgrade`") {
		t.Fatalf("status of a layout-1 state: %v", err)
	}
	if !strings.Contains(out, "state layout 1 (build not recorded); this build: layout 2") {
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
