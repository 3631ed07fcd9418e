package terminate_test

// Integration tests: real client processes (the static sockprobe) in
// attached cgroups, one in the host network namespace and one in a
// namespace the test makes, hold TCP and connected-UDP sockets to two
// backends; the termination programs run on the real kernel.

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// world has two backends, A and B, listening (TCP and UDP, same port) in
// the host namespace on two addresses of a veth whose other end is in the
// test's namespace, so clients on either side reach them at the same
// address.
type world struct {
	dir   string
	ns    *testenv.NetNS
	probe string
	a, b  netip.Addr
	port  uint16
}

func newWorld(t *testing.T) *world {
	t.Helper()
	var r [2]byte
	rand.Read(r[:])
	w := &world{
		dir:   testenv.StateDir(t),
		ns:    testenv.NewNetNS(t),
		probe: testenv.Binary(t, "./test/sockprobe"),
		port:  20000 + uint16(r[0])*32 + uint16(r[1]%32),
	}
	subnet := fmt.Sprintf("10.213.%d", r[1])
	w.a = netip.MustParseAddr(subnet + ".1")
	w.b = netip.MustParseAddr(subnet + ".2")
	// Guarded before the veth exists, so the guard outlasts it: a late
	// segment to the subnet (a FIN retransmitted after the link is gone)
	// is dropped here instead of following the default route.
	testenv.Blackhole(t, subnet+".0/24")
	host, peer := "pcth"+testenv.Suffix(), "pctc"+testenv.Suffix()
	testenv.Run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", w.ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	testenv.Run(t, "ip", "addr", "add", w.a.String()+"/24", "dev", host)
	testenv.Run(t, "ip", "addr", "add", w.b.String()+"/24", "dev", host)
	testenv.Run(t, "ip", "link", "set", host, "up")
	w.ns.IP(t, "addr", "add", subnet+".100/24", "dev", peer)
	w.ns.IP(t, "link", "set", peer, "up")
	return w
}

// listen starts a backend (not in any attached cgroup) on addr.
func (w *world) listen(t *testing.T, cg cgroup.Cgroup, name string, addr netip.Addr) {
	t.Helper()
	for _, proto := range []string{"tcp", "udp"} {
		p := testenv.Start(t, cg, exec.Command(w.probe, "listen", "-proto", proto, "-addr", w.addrPort(addr), "-name", name))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("backend %s %s: %+v", name, proto, r)
		}
	}
}

func (w *world) addrPort(addr netip.Addr) string {
	return netip.AddrPortFrom(addr, w.port).String()
}

// attach attaches a cgroup with a policy; netns is recorded so that the
// termination scans it.
func (w *world) attach(t *testing.T, id string, cg cgroup.Cgroup, doc string, netns string) {
	t.Helper()
	testenv.Attach(t, w.dir, id, cg.Path, doc, netns)
}

// client holds one connection open; it has said which server answered.
type client struct {
	name  string
	proc  *testenv.Proc
	proto string
}

// connect starts a holding client in cg (zero: a host process) inside ns
// (nil: the host's namespace) and waits until the backend answered.
func (w *world) connect(t *testing.T, name string, cg cgroup.Cgroup, ns *testenv.NetNS, proto string, backend netip.Addr, want string) *client {
	t.Helper()
	p := testenv.Start(t, cg, ns.Command(w.probe, "connect", "-proto", proto, "-addr", w.addrPort(backend), "-hold"))
	r := testenv.ParseProbe(t, p.Line(t, 5*time.Second))
	if !r.OK || r.Reply != want {
		t.Fatalf("client %s: want a connection answered by %s, got %+v", name, want, r)
	}
	return &client{name: name, proc: p, proto: proto}
}

// aborted checks that the client saw its connection destroyed. TCP reads
// fail with ECONNABORTED. A connected UDP socket is disconnected with
// sk_err ECONNABORTED: a blocked receive returns ECONNABORTED, while a send
// on the now unconnected socket fails with EDESTADDRREQ.
func (c *client) aborted(t *testing.T) {
	t.Helper()
	r := testenv.ParseProbe(t, c.proc.Line(t, 5*time.Second))
	t.Logf("client %s (%s): %s", c.name, c.proto, r.Errno)
	ok := r.Errno == "ECONNABORTED"
	if c.proto == "udp" {
		ok = ok || r.Errno == "EDESTADDRREQ"
	}
	if !ok {
		t.Errorf("client %s (%s): want its socket destroyed (ECONNABORTED), got %+v", c.name, c.proto, r)
	}
}

// alive checks that the client still holds its connection.
func (c *client) alive(t *testing.T) {
	t.Helper()
	if err := c.proc.Cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("client %s (%s) was touched: %v; stderr %s", c.name, c.proto, err, c.proc.Stderr())
	}
}

func TestBackendTerminatesOnlyItsClients(t *testing.T) {
	w := newWorld(t)
	w.listen(t, cgroup.Cgroup{}, "A", w.a)
	w.listen(t, cgroup.Cgroup{}, "B", w.b)

	hostCtr := testenv.Cgroup(t, "term-host")
	nsCtr := testenv.Cgroup(t, "term-ns")
	w.attach(t, "host-ctr", hostCtr, `{}`, "")
	w.attach(t, "ns-ctr", nsCtr, `{}`, w.ns.Path)
	// A process in a cgroup nested below the container's counts as the
	// container's.
	nested := testenv.ChildCgroup(t, nsCtr, "app")

	var toA, toB []*client
	for _, proto := range []string{"tcp", "udp"} {
		toA = append(toA,
			w.connect(t, "host-ctr->A", hostCtr, nil, proto, w.a, "A"),
			w.connect(t, "ns-ctr->A", nested, w.ns, proto, w.a, "A"))
		toB = append(toB,
			w.connect(t, "host-ctr->B", hostCtr, nil, proto, w.b, "B"),
			w.connect(t, "ns-ctr->B", nested, w.ns, proto, w.b, "B"))
	}
	hostProcs := []*client{
		w.connect(t, "host process->A", cgroup.Cgroup{}, nil, "tcp", w.a, "A"),
		w.connect(t, "host process->A", cgroup.Cgroup{}, nil, "udp", w.a, "A"),
	}
	backendA := netip.AddrPortFrom(w.a, w.port)

	// Dry run: lists the four sockets to A, per namespace, touches none.
	report, err := terminate.Backend(w.dir, backendA, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Namespaces) != 2 {
		t.Fatalf("want the host and the test namespace scanned, got %+v", report.Namespaces)
	}
	for _, n := range report.Namespaces {
		wantCgroup := hostCtr.ID
		if n.NetNS != terminate.HostNetNS {
			wantCgroup = nsCtr.ID
		}
		if n.Matched != 2 || n.Destroyed != 0 || n.Scanned < 2 {
			t.Errorf("dry run, netns %s: want 2 matched, 0 destroyed, got %+v", n.NetNS, n)
		}
		for _, s := range n.Sockets {
			if s.Peer != backendA.String() || s.CgroupID != wantCgroup {
				t.Errorf("dry run, netns %s: socket %+v: want peer %s in cgroup %d", n.NetNS, s, backendA, wantCgroup)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range append(append(toA, toB...), hostProcs...) {
		c.alive(t)
	}

	// The real thing: exactly the attached clients of A lose their sockets.
	report, err = terminate.Backend(w.dir, backendA, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if report.Matched != 4 || report.Destroyed != 4 {
		t.Errorf("want 4 sockets destroyed, got %+v", report)
	}
	for _, c := range toA {
		c.aborted(t)
	}
	time.Sleep(500 * time.Millisecond)
	for _, c := range append(toB, hostProcs...) {
		c.alive(t)
	}

	// Nothing is left to terminate.
	report, err = terminate.Backend(w.dir, backendA, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if report.Matched != 0 {
		t.Errorf("after termination: want nothing left, got %+v", report)
	}
}

// Detaching a backend container (portcullisctl detach, as CNI DEL and the
// OCI hook's poststop do) terminates its clients' sockets: every port of
// the container's own addresses.
func TestDetachTerminatesClientsOfTheContainer(t *testing.T) {
	w := newWorld(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	backendCtr := testenv.Cgroup(t, "term-backend")
	w.attach(t, "backend-a", backendCtr, fmt.Sprintf(`{"addresses": [%q]}`, w.a), "")
	w.listen(t, backendCtr, "A", w.a)
	w.listen(t, cgroup.Cgroup{}, "B", w.b)

	clientCtr := testenv.Cgroup(t, "term-client")
	w.attach(t, "client", clientCtr, `{}`, w.ns.Path)
	var toA, toB []*client
	for _, proto := range []string{"tcp", "udp"} {
		toA = append(toA, w.connect(t, "client->A", clientCtr, w.ns, proto, w.a, "A"))
		toB = append(toB, w.connect(t, "client->B", clientCtr, w.ns, proto, w.b, "B"))
	}

	out, err := exec.Command(ctl, "--state-dir", w.dir, "detach", "--id", "backend-a").CombinedOutput()
	if err != nil {
		t.Fatalf("portcullisctl detach: %v\n%s", err, out)
	}
	if want := "terminated 2 sockets connected to backend-a"; !strings.Contains(string(out), want) {
		t.Errorf("portcullisctl detach printed %q, want %q", out, want)
	}
	for _, c := range toA {
		c.aborted(t)
	}
	time.Sleep(500 * time.Millisecond)
	for _, c := range toB {
		c.alive(t)
	}
}

// portcullisctl terminate: a dry run prints the sockets and a count per
// namespace and changes nothing; then it destroys them.
func TestTerminateCommand(t *testing.T) {
	w := newWorld(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	w.listen(t, cgroup.Cgroup{}, "A", w.a)
	ctr := testenv.Cgroup(t, "term-cli")
	w.attach(t, "ctr", ctr, `{}`, w.ns.Path)
	tcp := w.connect(t, "ctr->A", ctr, w.ns, "tcp", w.a, "A")
	udp := w.connect(t, "ctr->A", ctr, w.ns, "udp", w.a, "A")
	backend := w.addrPort(w.a)

	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctl, append([]string{"--state-dir", w.dir, "terminate", "--backend", backend}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portcullisctl terminate %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("--protocol", "tcp", "--dry-run")
	t.Logf("portcullisctl terminate --dry-run:\n%s", out)
	for _, want := range []string{"NETNS", w.ns.Path, "tcp", "established", backend, "(dry run)"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "udp") {
		t.Errorf("--protocol tcp listed UDP sockets:\n%s", out)
	}
	time.Sleep(300 * time.Millisecond)
	tcp.alive(t)
	udp.alive(t)

	var report terminate.Report
	if err := json.Unmarshal([]byte(run("-o", "json")), &report); err != nil {
		t.Fatal(err)
	}
	var inNS *terminate.Namespace
	for i, n := range report.Namespaces {
		if n.NetNS == w.ns.Path {
			inNS = &report.Namespaces[i]
		}
	}
	if inNS == nil || inNS.Destroyed != 2 || report.Destroyed != 2 {
		t.Errorf("want 2 sockets destroyed in %s, got %+v", w.ns.Path, report)
	}
	tcp.aborted(t)
	udp.aborted(t)

	for _, bad := range [][]string{{"--backend", "10.0.0.1"}, {"--backend", "10.0.0.1:0"}, {"--backend", backend, "--protocol", "sctp"}} {
		out, err := exec.Command(ctl, append([]string{"--state-dir", w.dir, "terminate"}, bad...)...).CombinedOutput()
		if err == nil {
			t.Errorf("terminate %v succeeded:\n%s", bad, out)
		}
	}
}
