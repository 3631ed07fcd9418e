package main

import (
	"os"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestUnloadRefusesWhileAttachedUnlessForced(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "unload")
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", writeFile(t, "p.json", `{}`), "--id", "u")
	if _, err := run(t, "unload", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "1 attachments exist") {
		t.Fatalf("unload with an attachment: %v", err)
	}
	mustRun(t, "unload", "--state-dir", dir, "--force")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state dir still there: %v", err)
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); strings.TrimSpace(out) != "" {
		t.Errorf("programs left on the cgroup:\n%s", out)
	}
	// Unloading what is not loaded is fine.
	mustRun(t, "unload", "--state-dir", dir)
}
