package main

import (
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestDetachByIDAndByCgroup(t *testing.T) {
	dir := testenv.StateDir(t)
	a := testenv.Cgroup(t, "a")
	b := testenv.Cgroup(t, "b")
	pol := writeFile(t, "p.json", `{}`)
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", a.Path, "--policy", pol, "--id", "a")
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", b.Path, "--policy", pol, "--id", "b")
	if out := mustRun(t, "detach", "--state-dir", dir, "--id", "a"); !strings.Contains(out, "detached a") {
		t.Errorf("detach --id: %s", out)
	}
	if out := mustRun(t, "detach", "--state-dir", dir, "--cgroup", b.Path); !strings.Contains(out, "detached b") {
		t.Errorf("detach --cgroup: %s", out)
	}
	for _, cg := range []string{a.Path, b.Path} {
		if out := testenv.Run(t, "bpftool", "cgroup", "show", cg); strings.TrimSpace(out) != "" {
			t.Errorf("programs left on %s:\n%s", cg, out)
		}
	}
	if _, err := run(t, "detach", "--state-dir", dir, "--id", "a"); err == nil || !strings.Contains(err.Error(), "no such attachment") {
		t.Errorf("detaching twice: %v", err)
	}
	if _, err := run(t, "detach", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "exactly one of --id and --cgroup") {
		t.Errorf("detach without a target: %v", err)
	}
}
