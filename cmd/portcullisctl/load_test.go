package main

import (
	"os"
	"os/exec"
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

// TestLoadWithoutCapPerfmon: a root shell without CAP_PERFMON (and without
// CAP_SYS_ADMIN, which stands in for it) cannot load the programs. load
// says which capability is missing, in place of the verifier's message
// about a helper, and leaves no state behind; doctor names it first.
func TestLoadWithoutCapPerfmon(t *testing.T) {
	capsh := testenv.RequireCommand(t, "capsh", "libcap2-bin")
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	dir := testenv.StateDir(t)
	out, err := exec.Command(capsh, "--drop=cap_perfmon,cap_sys_admin", "--", "-c", ctl+" load --state-dir "+dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (root has them); this process lacks CAP_PERFMON:") {
		t.Fatalf("load without CAP_PERFMON: %v\n%s", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state %s after the refused load: %v", dir, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), "portcullis-tmp-*")); len(left) != 0 {
		t.Fatalf("temporary state folders left: %v", left)
	}
	out, err = exec.Command(capsh, "--drop=cap_perfmon,cap_sys_admin", "--", "-c", ctl+" doctor --state-dir "+dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "missing (first: capabilities)") || !strings.Contains(string(out), "this process lacks CAP_PERFMON") {
		t.Fatalf("doctor without CAP_PERFMON: %v\n%s", err, out)
	}
}
