package state_test

// Integration tests: the real programs, attached to real cgroups, acting
// on real sockets made by a static Go binary (sockprobe) and busybox-static
// inside a network namespace each test creates.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// world is one test's namespace, state and container cgroup. The namespace
// has an interface with 10.200.0.1-3 and fd00::1-3; the container is
// pinned to 10.200.0.2 and fd00::2.
type world struct {
	ns    *testenv.NetNS
	dir   string
	cg    cgroup.Cgroup
	probe string
}

const containerPolicy = `{
  "addresses": ["10.200.0.2", "fd00::2"],` + policyPorts

// policyPorts is the rest of the test policy, shared with the IPv4-only one.
const policyPorts = `
  "allowedPorts": ["18000-18010", "9090"],
  "portMappings": [{"containerPort": 80, "hostPort": 18080, "protocol": "tcp"},
                   {"containerPort": 53, "hostPort": 18053, "protocol": "udp"}]
}`

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{
		ns:    testenv.NewNetNS(t),
		dir:   testenv.StateDir(t),
		cg:    testenv.Cgroup(t, "ctr"),
		probe: testenv.Binary(t, "./test/sockprobe"),
	}
	// No dummy driver here; one end of a veth pair inside the namespace
	// holds the addresses instead.
	w.ns.IP(t, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	w.ns.IP(t, "link", "set", "d1", "up")
	for i := 1; i <= 3; i++ {
		w.ns.IP(t, "addr", "add", fmt.Sprintf("10.200.0.%d/24", i), "dev", "d0")
		w.ns.IP(t, "addr", "add", fmt.Sprintf("fd00::%d/64", i), "dev", "d0", "nodad")
	}
	w.ns.IP(t, "link", "set", "d0", "up")
	return w
}

func (w *world) attach(t *testing.T, doc string) *state.Attachment {
	t.Helper()
	return testenv.Attach(t, w.dir, "ctr", w.cg.Path, doc, w.ns.Path)
}

func (w *world) detach(t *testing.T) {
	t.Helper()
	testenv.Detach(t, w.dir, "ctr")
}

// probeIn runs sockprobe in cg (zero: outside any container) and returns
// its first result; the process keeps running (a server keeps listening).
func (w *world) probeIn(t *testing.T, cg cgroup.Cgroup, args ...string) (testenv.ProbeResult, *testenv.Proc) {
	t.Helper()
	p := testenv.Start(t, cg, w.ns.Command(append([]string{w.probe}, args...)...))
	return testenv.ParseProbe(t, p.Line(t, 5*time.Second)), p
}

// listen starts a server in cg and returns what getsockname says inside
// and what ss shows outside.
func (w *world) listen(t *testing.T, cg cgroup.Cgroup, proto, addr string) (testenv.ProbeResult, []string) {
	t.Helper()
	r, _ := w.probeIn(t, cg, "listen", "-proto", proto, "-addr", addr)
	if !r.OK {
		return r, nil
	}
	port := r.Local[strings.LastIndex(r.Local, ":")+1:]
	var p uint16
	fmt.Sscan(port, &p)
	// The app sees the container port; ss sees the host port.
	if mapped := hostPortOf(p, proto); mapped != 0 {
		p = mapped
	}
	return r, w.ns.Listening(t, proto, p)
}

func hostPortOf(containerPort uint16, proto string) uint16 {
	switch {
	case containerPort == 80 && proto == "tcp":
		return 18080
	case containerPort == 53 && proto == "udp":
		return 18053
	}
	return 0
}

func expectListening(t *testing.T, got []string, want string) {
	t.Helper()
	if len(got) != 1 || got[0] != want {
		t.Fatalf("ss shows %v listening, want exactly %s", got, want)
	}
}

func TestWildcardBindIsPinned(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	for _, tc := range []struct{ proto, addr, want string }{
		{"tcp", "0.0.0.0:18001", "10.200.0.2:18001"},
		{"udp", "0.0.0.0:18001", "10.200.0.2:18001"},
		{"tcp", "[::]:18002", "[fd00::2]:18002"},
		{"udp", "[::]:18002", "[fd00::2]:18002"},
		// A dual-stack socket binding the v4-mapped wildcard is an IPv4
		// bind and is pinned to the IPv4 address.
		{"tcp", "[::ffff:0.0.0.0]:18003", "[::ffff:10.200.0.2]:18003"},
	} {
		t.Run(tc.proto+" "+tc.addr, func(t *testing.T) {
			r, ss := w.listen(t, w.cg, tc.proto, tc.addr)
			if !r.OK {
				t.Fatalf("bind %s failed: %s", tc.addr, r.Error)
			}
			expectListening(t, ss, tc.want)
		})
	}
}

func TestBindOutsidePolicyIsRefused(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	for _, tc := range []struct{ proto, addr, why string }{
		{"tcp", "0.0.0.0:18011", "port outside allowedPorts"},
		{"udp", "0.0.0.0:9091", "port outside allowedPorts"},
		{"tcp", "[::]:81", "port outside allowedPorts, v6"},
		{"tcp", "10.200.0.3:18001", "another host address"},
		{"tcp", "[fd00::3]:18001", "another host address, v6"},
		{"tcp", "[::ffff:10.200.0.3]:18001", "another host address, v4-mapped"},
		{"udp", "[::ffff:0.0.0.0]:7", "port outside allowedPorts, v4-mapped"},
	} {
		t.Run(tc.why+" "+tc.addr, func(t *testing.T) {
			r, _ := w.probeIn(t, w.cg, "listen", "-proto", tc.proto, "-addr", tc.addr)
			if r.OK || r.Errno != "EPERM" {
				t.Fatalf("bind %s: got %+v, want EPERM", tc.addr, r)
			}
		})
	}
	for _, tc := range []struct{ proto, addr, want string }{
		{"tcp", "127.0.0.1:18004", "127.0.0.1:18004"},
		{"tcp", "[::1]:18004", "[::1]:18004"},
		{"tcp", "10.200.0.2:9090", "10.200.0.2:9090"},
	} {
		t.Run("allowed "+tc.addr, func(t *testing.T) {
			r, ss := w.listen(t, w.cg, tc.proto, tc.addr)
			if !r.OK {
				t.Fatalf("bind %s: %s", tc.addr, r.Error)
			}
			expectListening(t, ss, tc.want)
		})
	}
	t.Run("ephemeral port", func(t *testing.T) {
		r, _ := w.probeIn(t, w.cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:0")
		if !r.OK || !strings.HasPrefix(r.Local, "10.200.0.2:") {
			t.Fatalf("bind to port 0: %+v, want an ephemeral port on 10.200.0.2", r)
		}
	})
}

func TestPortMappingRemapsBindAndHidesHostPort(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	for _, tc := range []struct{ proto, addr, inside, outside string }{
		{"tcp", "0.0.0.0:80", "10.200.0.2:80", "10.200.0.2:18080"},
		{"udp", "0.0.0.0:53", "10.200.0.2:53", "10.200.0.2:18053"},
		{"tcp", "[::]:80", "[fd00::2]:80", "[fd00::2]:18080"},
	} {
		t.Run(tc.proto+" "+tc.addr, func(t *testing.T) {
			r, ss := w.listen(t, w.cg, tc.proto, tc.addr)
			if !r.OK {
				t.Fatalf("bind %s: %s", tc.addr, r.Error)
			}
			if r.Local != tc.inside {
				t.Errorf("getsockname inside the container = %s, want %s", r.Local, tc.inside)
			}
			expectListening(t, ss, tc.outside)
		})
	}
	// A client outside reaches the server on the host port.
	_, ss := w.listen(t, w.cg, "tcp", "0.0.0.0:80")
	if len(ss) == 0 {
		t.Fatal("no listener")
	}
	r, _ := w.probeIn(t, cgroup.Cgroup{}, "connect", "-proto", "tcp", "-addr", "10.200.0.2:18080")
	if !r.OK || r.Reply != "server" {
		t.Fatalf("connect to the host port: %+v", r)
	}
}

func TestOutgoingConnectionsLeaveFromPinnedAddress(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	// Servers outside the container, on every address.
	// The UDP servers bind one address each so their replies leave from
	// the address the client connected to.
	tcp4, tcp4p := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "tcp", "-addr", "[::]:9000")
	udp4, udp4p := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "udp", "-addr", "10.200.0.1:9001")
	udp6, udp6p := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "udp", "-addr", "[fd00::1]:9001")
	if !tcp4.OK || !udp4.OK || !udp6.OK {
		t.Fatalf("servers: %+v %+v %+v", tcp4, udp4, udp6)
	}
	for _, tc := range []struct {
		name, proto, dst, wantSrc string
		server                    *testenv.Proc
	}{
		{"tcp4", "tcp", "10.200.0.1:9000", "[::ffff:10.200.0.2]", tcp4p},
		{"tcp6", "tcp", "[fd00::1]:9000", "[fd00::2]", tcp4p},
		{"tcp4 from a dual-stack socket (v4-mapped)", "tcp", "[::ffff:10.200.0.1]:9000", "[::ffff:10.200.0.2]", tcp4p},
		{"connected udp4", "udp", "10.200.0.1:9001", "10.200.0.2", udp4p},
		{"connected udp6", "udp", "[fd00::1]:9001", "[fd00::2]", udp6p},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := w.probeIn(t, w.cg, "connect", "-proto", tc.proto, "-addr", tc.dst)
			if !r.OK {
				t.Fatalf("connect %s: %+v", tc.dst, r)
			}
			seen := testenv.ParseProbe(t, tc.server.Line(t, 5*time.Second))
			if !strings.HasPrefix(seen.Peer, tc.wantSrc+":") {
				t.Fatalf("server saw the connection from %s, want %s", seen.Peer, tc.wantSrc)
			}
		})
	}
	for _, tc := range []struct {
		name, dst, wantSrc string
		server             *testenv.Proc
	}{
		{"unconnected udp4 (sendto)", "10.200.0.1:9001", "10.200.0.2", udp4p},
		{"unconnected udp6 (sendto)", "[fd00::1]:9001", "[fd00::2]", udp6p},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := w.probeIn(t, w.cg, "connect", "-proto", "udp", "-sendto", "-addr", tc.dst)
			if !r.OK || r.Peer != tc.dst {
				t.Fatalf("sendto %s: %+v", tc.dst, r)
			}
			seen := testenv.ParseProbe(t, tc.server.Line(t, 5*time.Second))
			if !strings.HasPrefix(seen.Peer, tc.wantSrc+":") {
				t.Fatalf("server got the datagram from %s, want %s", seen.Peer, tc.wantSrc)
			}
		})
	}
	t.Run("loopback destination keeps working", func(t *testing.T) {
		srv, _ := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "tcp", "-addr", "127.0.0.1:9002")
		if !srv.OK {
			t.Fatal(srv.Error)
		}
		r, _ := w.probeIn(t, w.cg, "connect", "-proto", "tcp", "-addr", "127.0.0.1:9002")
		if !r.OK || r.Reply != "server" {
			t.Fatalf("connect to 127.0.0.1: %+v", r)
		}
	})
}

func TestNestedCgroupGetsTheSamePolicy(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	child := testenv.ChildCgroup(t, w.cg, "worker")
	grandchild := testenv.ChildCgroup(t, child, "task")
	for _, cg := range []cgroup.Cgroup{child, grandchild} {
		_, ss := w.listen(t, cg, "tcp", "0.0.0.0:18005")
		expectListening(t, ss, "10.200.0.2:18005")
		r, _ := w.probeIn(t, cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:81")
		if r.Errno != "EPERM" {
			t.Fatalf("bind :81 in %s: %+v, want EPERM", cg.Path, r)
		}
		w.killProbes(t, cg)
	}
}

// killProbes stops the servers in a cgroup so the next one can reuse the port.
func (w *world) killProbes(t *testing.T, cg cgroup.Cgroup) {
	data, _ := os.ReadFile(filepath.Join(cg.Path, "cgroup.procs"))
	for _, pid := range strings.Fields(string(data)) {
		exec.Command("kill", "-9", pid).Run()
	}
	for i := 0; i < 100; i++ {
		data, _ = os.ReadFile(filepath.Join(cg.Path, "cgroup.procs"))
		if strings.TrimSpace(string(data)) == "" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("processes in %s did not exit", cg.Path)
}

func TestProcessOutsideTheCgroupIsUntouched(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	_, ss := w.listen(t, cgroup.Cgroup{}, "tcp", "0.0.0.0:81")
	expectListening(t, ss, "0.0.0.0:81")
	other := testenv.Cgroup(t, "other")
	_, ss = w.listen(t, other, "tcp", "0.0.0.0:82")
	expectListening(t, ss, "0.0.0.0:82")
}

func TestDetachRestoresNormalBehaviour(t *testing.T) {
	w := newWorld(t)
	w.attach(t, containerPolicy)
	r, _ := w.probeIn(t, w.cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:81")
	if r.Errno != "EPERM" {
		t.Fatalf("attached: bind :81 = %+v, want EPERM", r)
	}
	w.detach(t)
	_, ss := w.listen(t, w.cg, "tcp", "0.0.0.0:81")
	expectListening(t, ss, "0.0.0.0:81")
	r, _ = w.probeIn(t, w.cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:80")
	if !r.OK || r.Local != "0.0.0.0:80" {
		t.Fatalf("detached: bind :80 = %+v, want 0.0.0.0:80 unmapped", r)
	}
	expectListening(t, w.ns.Listening(t, "tcp", 80), "0.0.0.0:80")
	out := testenv.Run(t, "bpftool", "cgroup", "show", w.cg.Path)
	if strings.TrimSpace(out) != "" {
		t.Fatalf("bpftool still shows programs on the cgroup:\n%s", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(w.dir, "cgroups")); len(entries) != 0 {
		t.Fatalf("pinned link folders left: %v", entries)
	}
}

func TestBusyboxStatic(t *testing.T) {
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	w := newWorld(t)
	// IPv4 only: busybox listens on a dual-stack [::] socket, which is
	// pinned to the v4-mapped form of the container's IPv4 address.
	w.attach(t, `{"addresses": ["10.200.0.2"],`+policyPorts)

	nc := testenv.Start(t, w.cg, w.ns.Command(busybox, "nc", "-l", "-p", "18006"))
	waitListening(t, w.ns, 18006, "[::ffff:10.200.0.2]:18006")

	refused := testenv.Start(t, w.cg, w.ns.Command(busybox, "nc", "-l", "-p", "81"))
	refused.Wait(t, 5*time.Second)
	if !strings.Contains(refused.Stderr(), "Operation not permitted") {
		t.Fatalf("busybox nc -l -p 81: stderr %q, want a bind EPERM", refused.Stderr())
	}

	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from a container\n"), 0o644)
	testenv.Start(t, w.cg, w.ns.Command(busybox, "httpd", "-f", "-p", "80", "-h", www))
	waitListening(t, w.ns, 18080, "[::ffff:10.200.0.2]:18080")
	got := w.ns.Exec(t, busybox, "wget", "-q", "-O", "-", "http://10.200.0.2:18080/")
	if got != "hello from a container\n" {
		t.Fatalf("httpd via the host port answered %q", got)
	}

	// busybox as a client: its connection leaves from the pinned address.
	srv, srvp := w.probeIn(t, cgroup.Cgroup{}, "listen", "-proto", "tcp", "-addr", "0.0.0.0:9003")
	if !srv.OK {
		t.Fatal(srv.Error)
	}
	client := testenv.Start(t, w.cg, w.ns.Command(busybox, "nc", "10.200.0.1", "9003"))
	seen := testenv.ParseProbe(t, srvp.Line(t, 5*time.Second))
	if !strings.HasPrefix(seen.Peer, "[::ffff:10.200.0.2]:") && !strings.HasPrefix(seen.Peer, "10.200.0.2:") {
		t.Fatalf("busybox nc connected from %s, want 10.200.0.2", seen.Peer)
	}
	client.Kill()
	nc.Kill()
}

func waitListening(t *testing.T, ns *testenv.NetNS, port uint16, want string) {
	t.Helper()
	var got []string
	for i := 0; i < 100; i++ {
		if got = ns.Listening(t, "tcp", port); len(got) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	expectListening(t, got, want)
}
