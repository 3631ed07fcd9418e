package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestLoadIsIdempotentAndPinsEverything(t *testing.T) {
	dir := testenv.StateDir(t)
	if out := mustRun(t, "load", "--state-dir", dir); !strings.Contains(out, "loaded into") {
		t.Fatalf("first load: %s", out)
	}
	if out := mustRun(t, "load", "--state-dir", dir); !strings.Contains(out, "already loaded") {
		t.Fatalf("second load: %s", out)
	}
	for _, pinned := range []string{"progs/bind4", "progs/connect6", "maps/policies", "maps/attachments", "cgroups"} {
		if _, err := os.Stat(filepath.Join(dir, pinned)); err != nil {
			t.Errorf("%s not pinned: %v", pinned, err)
		}
	}
	// No temporary folder is left next to the state.
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), "portcullis-tmp-*"))
	if len(left) != 0 {
		t.Errorf("temporary state folders left: %v", left)
	}
}
