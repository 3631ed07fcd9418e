// Package bypass attacks portcullis' isolation from inside attached
// cgroups, the way root in a container would, and checks what the kernel
// did: who got the socket, which listener took the connection, which source
// the peer saw. Every attempt is a subtest named as in docs/security.md.
//
// The "host network namespace" of these tests is a namespace the test
// makes, so nothing it binds can meet another test's sockets: its
// processes outside any attached cgroup play the host.
package bypass

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Containers of the world. A and B are dual-stack, C is IPv4-only, R may
// open raw sockets.
const (
	addrA  = "127.10.0.3"
	addrA6 = "fd10::3"
	addrB  = "127.10.0.4"
	addrB6 = "fd10::4"
	addrC  = "127.10.0.5"
	addrR  = "127.10.0.6"

	ports      = `"allowedPorts": ["26000-26199"]`
	mappedFrom = "80"
	mappedTo   = "26180"
)

type world struct {
	dir   string
	ns    *testenv.NetNS
	probe string
	host  cgroup.Cgroup // the zero cgroup: processes start where the test runs
	a, b  cgroup.Cgroup
	c, r  cgroup.Cgroup
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{
		dir:   testenv.StateDir(t),
		ns:    testenv.NewNetNS(t),
		probe: testenv.Binary(t, "./test/sockprobe"),
	}
	for _, a := range []string{addrA6, addrB6} {
		w.ns.IP(t, "addr", "add", a+"/128", "dev", "lo", "nodad")
	}
	w.a = w.container(t, "a", fmt.Sprintf(`{"addresses": [%q, %q], %s,
		"portMappings": [{"containerPort": %s, "hostPort": %s}]}`, addrA, addrA6, ports, mappedFrom, mappedTo))
	w.b = w.container(t, "b", fmt.Sprintf(`{"addresses": [%q, %q], %s}`, addrB, addrB6, ports))
	w.c = w.container(t, "c", fmt.Sprintf(`{"addresses": [%q], %s}`, addrC, ports))
	w.r = w.container(t, "r", fmt.Sprintf(`{"addresses": [%q], "allowRawSockets": true}`, addrR))
	return w
}

func (w *world) container(t *testing.T, name, policy string) cgroup.Cgroup {
	t.Helper()
	cg := testenv.Cgroup(t, "bypass-"+name)
	testenv.Attach(t, w.dir, "bypass-"+name, cg.Path, policy, w.ns.Path)
	return cg
}

// start runs sockprobe in cg (inside the world's namespace).
func (w *world) start(t *testing.T, cg cgroup.Cgroup, args ...string) *testenv.Proc {
	t.Helper()
	return testenv.Start(t, cg, w.ns.Command(append([]string{w.probe}, args...)...))
}

// run runs a probe that exits and returns its (first) result.
func (w *world) run(t *testing.T, cg cgroup.Cgroup, args ...string) testenv.ProbeResult {
	t.Helper()
	p := w.start(t, cg, args...)
	return testenv.ParseProbe(t, p.Line(t, 10*time.Second))
}

// server starts a listener and fails unless it is listening on want
// (empty: anywhere).
func (w *world) server(t *testing.T, cg cgroup.Cgroup, want string, args ...string) *testenv.Proc {
	t.Helper()
	p, _ := w.serve(t, cg, want, args...)
	return p
}

// serve is server, also returning the local address the listener got.
func (w *world) serve(t *testing.T, cg cgroup.Cgroup, want string, args ...string) (*testenv.Proc, string) {
	t.Helper()
	p := w.start(t, cg, append([]string{"listen"}, args...)...)
	r := testenv.ParseProbe(t, p.Line(t, 10*time.Second))
	if !r.OK || (want != "" && r.Local != want) {
		t.Fatalf("listen %v: %+v, want listening on %q", args, r, want)
	}
	return p, r.Local
}

// refused runs a probe and fails unless it failed with errno.
func (w *world) refused(t *testing.T, cg cgroup.Cgroup, errno string, args ...string) testenv.ProbeResult {
	t.Helper()
	r := w.run(t, cg, args...)
	if r.OK || r.Errno != errno {
		t.Fatalf("sockprobe %v: %+v, want %s", args, r, errno)
	}
	return r
}

// peer reads the server's next accept or datagram event and returns the
// address the server saw the client come from.
func peer(t *testing.T, srv *testenv.Proc) string {
	t.Helper()
	r := testenv.ParseProbe(t, srv.Line(t, 10*time.Second))
	if !r.OK || (r.Event != "accept" && r.Event != "datagram") {
		t.Fatalf("server: %+v, want an accept or a datagram", r)
	}
	return r.Peer
}

// connect connects from cg and returns the probe's result, failing unless
// it got a reply.
func (w *world) connect(t *testing.T, cg cgroup.Cgroup, args ...string) testenv.ProbeResult {
	t.Helper()
	r := w.run(t, cg, append([]string{"connect"}, args...)...)
	if !r.OK {
		t.Fatalf("connect %v: %+v", args, r)
	}
	return r
}

// who connects from the host n times and counts which server answered.
func (w *world) who(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		got[w.connect(t, w.host, "-addr", addr).Reply]++
	}
	return got
}

// listeners returns what ss shows listening on port in the namespace.
func (w *world) listeners(t *testing.T, proto string, port uint16) string {
	t.Helper()
	l := w.ns.Listening(t, proto, port)
	return strings.Join(l, " ")
}

// sh runs a busybox shell command line in cg and returns its output.
func (w *world) sh(t *testing.T, cg cgroup.Cgroup, script string) string {
	t.Helper()
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	cmd := w.ns.Command(busybox, "sh", "-c", script)
	cmd.Env = []string{"PROBE=" + w.probe, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	p := testenv.Start(t, cg, cmd)
	return p.Output(t, 20*time.Second)
}
