package testenv_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// A process that prints and exits at once loses none of its output: each
// of many short runs returns every line (the race issue 9 fixed lost the
// tail of exactly these).
func TestStartKeepsAllOutputOfFastProcesses(t *testing.T) {
	for i := 0; i < 200; i++ {
		p := testenv.Start(t, cgroup.Cgroup{}, exec.Command("sh", "-c", "echo one; echo two; echo three >&2"))
		if out := p.Output(t, 10*time.Second); out != "one\ntwo" {
			t.Fatalf("run %d: stdout %q, want both lines", i, out)
		}
		if got := p.Stderr(); got != "three\n" {
			t.Fatalf("run %d: stderr %q", i, got)
		}
	}
	p := testenv.Start(t, cgroup.Cgroup{}, exec.Command("sh", "-c", "echo first"))
	if line := p.Line(t, 10*time.Second); line != "first" {
		t.Fatalf("Line: %q", line)
	}
}

// Output nobody reads does not block the process, and a daemon that keeps
// the pipes open after the process exited does not block Wait or Kill.
func TestStartNeverHangs(t *testing.T) {
	p := testenv.Start(t, cgroup.Cgroup{}, exec.Command("seq", "100000"))
	out := p.Output(t, 10*time.Second)
	if lines := strings.Split(out, "\n"); len(lines) != 100000 || lines[99999] != "100000" {
		t.Fatalf("seq 100000: %d lines", len(lines))
	}

	// The sleep outlives the shell in the test's cgroup, whose cleanup
	// kills it.
	cg := testenv.Cgroup(t, "daemon")
	daemon := testenv.Start(t, cg, exec.Command("sh", "-c", "sleep 60 & echo started"))
	if out := daemon.Output(t, 10*time.Second); out != "started" {
		t.Fatalf("stdout %q", out)
	}
}
