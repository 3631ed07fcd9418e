package state_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestSockCreateFollowsThePolicysMarks: an attachment whose policy has no
// mark links the unmarked sock_create (no policy lookup per socket); a
// policy change that adds a mark links the full one, and the next socket
// the container creates carries the mark; dropping the mark links the
// unmarked one again. Raw sockets are refused throughout, and connections
// leave from the pinned address.
func TestSockCreateFollowsThePolicysMarks(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	if r, _ := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "tcp", "-addr", "10.200.0.1:18500"); !r.OK {
		t.Fatalf("server: %+v", r)
	}
	marked := strings.Replace(containerPolicy, `"addresses"`, `"mark": 5121, "addresses"`, 1)

	for i, step := range []struct {
		doc     string
		program string
		mark    uint32
	}{
		{containerPolicy, "sock_create_unmarked", 0},
		{marked, "sock_create", 5121},
		{containerPolicy, "sock_create_unmarked", 0},
	} {
		if i > 0 {
			testenv.SetPolicy(t, w.dir, "ctr", step.doc)
		}
		if got, want := testenv.LinkProgram(t, filepath.Join(w.dir, "cgroups", "ctr", "sock_create")), testenv.PinnedProgram(t, filepath.Join(w.dir, "progs", step.program)); got != want {
			t.Fatalf("with mark %d: the sock_create link runs program %d, want %s (%d)", step.mark, got, step.program, want)
		}
		r, _ := w.probeIn(t, w.cg, "connect", "-proto", "tcp", "-addr", "10.200.0.1:18500")
		if !r.OK || !strings.HasPrefix(r.Local, "10.200.0.2:") || r.Mark != step.mark {
			t.Fatalf("with mark %d: connect %+v, want it from 10.200.0.2 with SO_MARK %d", step.mark, r, step.mark)
		}
		if r, _ := w.probeIn(t, w.cg, "raw", "-addr", "10.200.0.1:0"); r.OK || r.Errno != "EPERM" {
			t.Fatalf("with mark %d: raw socket %+v, want EPERM", step.mark, r)
		}
	}
}
