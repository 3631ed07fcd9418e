package dispatch_test

// Integration tests on the real kernel: servers (the static sockprobe) in a
// network namespace the test makes, registered with portcullisctl; clients
// dial from inside that namespace, where all of 127.0.0.0/8 is local.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/dispatch"
	"github.com/portcullis-net/portcullis/test/testenv"
)

type world struct {
	t     *testing.T
	dir   string
	ns    *testenv.NetNS
	ctl   string
	probe string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return &world{
		t:     t,
		dir:   testenv.StateDir(t),
		ns:    testenv.NewNetNS(t),
		ctl:   testenv.Binary(t, "./cmd/portcullisctl"),
		probe: testenv.Binary(t, "./test/sockprobe"),
	}
}

// run runs portcullisctl dispatch --netns NS args... and returns its
// output and error.
func (w *world) run(args ...string) (string, error) {
	w.t.Helper()
	argv := append([]string{"dispatch", "--netns", w.ns.Path}, args...)
	out, err := exec.Command(w.ctl, argv...).CombinedOutput()
	return string(out), err
}

func (w *world) must(args ...string) string {
	w.t.Helper()
	out, err := w.run(args...)
	if err != nil {
		w.t.Fatalf("portcullisctl dispatch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (w *world) list() *dispatch.Listing {
	w.t.Helper()
	var l dispatch.Listing
	out := w.must("list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		w.t.Fatalf("list -o json: %v\n%s", err, out)
	}
	return &l
}

// server is a sockprobe listening in the namespace (in cg, when set).
type server struct {
	*testenv.Proc
	name string
}

func (w *world) serve(cg cgroup.Cgroup, proto, addr, name string, extra ...string) *server {
	w.t.Helper()
	args := append([]string{w.probe, "listen", "-proto", proto, "-addr", addr, "-name", name}, extra...)
	p := testenv.Start(w.t, cg, w.ns.Command(args...))
	if r := testenv.ParseProbe(w.t, p.Line(w.t, 5*time.Second)); !r.OK || r.Event != "listening" {
		w.t.Fatalf("server %s: %+v", name, r)
	}
	return &server{p, name}
}

func (s *server) pid() string { return fmt.Sprint(s.Cmd.Process.Pid) }

// event is the server's next line.
func (s *server) event(t *testing.T) testenv.ProbeResult {
	t.Helper()
	return testenv.ParseProbe(t, s.Line(t, 5*time.Second))
}

// dial connects over TCP from inside the namespace and returns the first
// line the server sends (its name) and the client's local address.
func (w *world) dial(addr string) (reply, local string, err error) {
	var conn net.Conn
	err = ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	})
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), conn.LocalAddr().String(), err
}

// expect dials addr and checks that server s accepted it, seeing the
// dialled address as its local one and the client's as its peer.
func (w *world) expect(s *server, addr string) {
	w.t.Helper()
	reply, local, err := w.dial(addr)
	if err != nil {
		w.t.Fatalf("dial %s: %v (want %s)", addr, err, s.name)
	}
	if reply != s.name {
		w.t.Fatalf("dial %s reached %q, want %s", addr, reply, s.name)
	}
	ev := s.event(w.t)
	if ev.Event != "accept" || unmap(ev.Local) != addr || unmap(ev.Peer) != local {
		w.t.Fatalf("dial %s from %s: server %s saw %+v", addr, local, s.name, ev)
	}
}

// refused checks that a dial fails at once with ECONNREFUSED.
func (w *world) refused(addr string) {
	w.t.Helper()
	start := time.Now()
	_, _, err := w.dial(addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		w.t.Fatalf("dial %s: %v, want ECONNREFUSED", addr, err)
	}
	if time.Since(start) > time.Second {
		w.t.Fatalf("dial %s took %v to be refused", addr, time.Since(start))
	}
}

var sampledPorts = []int{1, 2, 22, 79, 80, 81, 443, 1023, 1024, 8080, 16016, 16017, 32767, 32768, 49151, 60000, 65534, 65535}
var sampledHosts = []int{0, 1, 2, 7, 63, 64, 100, 127, 128, 129, 200, 254, 255}

func TestOneTCPSocketServesAPrefixOnEveryPort(t *testing.T) {
	w := newWorld(t)
	web := w.serve(cgroup.Cgroup{}, "tcp", "127.0.0.1:16001", "web")
	w.must("bind", "web", "tcp", "127.0.7.0/24", "0-65535")
	out := w.must("register", "web", "--pid", web.pid())
	if !strings.Contains(out, "127.0.0.1:16001") {
		t.Fatalf("register printed %q, want the socket's address", out)
	}
	n := 0
	for i, host := range sampledHosts {
		// Every port for some addresses, every address for some ports.
		for j, port := range sampledPorts {
			if (i+j)%3 != 0 && port != 80 && port != 65535 {
				continue
			}
			w.expect(web, fmt.Sprintf("127.0.7.%d:%d", host, port))
			n++
		}
	}
	// Outside the prefix nothing is dispatched, and nothing listens.
	w.refused("127.0.8.1:80")
	w.refused("127.0.6.255:65535")

	l := w.list()
	if len(l.Destinations) != 1 {
		t.Fatalf("list: %+v", l)
	}
	d := l.Destinations[0]
	if d.Label != "web" || d.Protocol != "tcp" || d.Socket == 0 || len(d.Bindings) != 1 || d.Bindings[0].Prefix != "127.0.7.0/24" || d.Bindings[0].Ports != "0-65535" {
		t.Fatalf("list: %+v", d)
	}
	// A SYN the kernel retransmits (the machine is shared) is looked
	// up again, so the counts are at least the dials.
	if d.Hits < uint64(n) || d.Lookups != d.Hits || d.Misses != 0 {
		t.Fatalf("counters %+v, want %d lookups and hits", d.Counters, n)
	}
	if l.Unmatched < 2 {
		t.Fatalf("unmatched = %d, want at least the 2 dials outside the prefix", l.Unmatched)
	}
	// The table shows the same counters (the dials are over: no SYN is
	// left to retransmit).
	table := w.must("list")
	if !strings.Contains(table, "127.0.7.0/24:0-65535") || !strings.Contains(table, fmt.Sprint(d.Hits)) {
		t.Fatalf("list table:\n%s\nwant the %d hits of list -o json", table, d.Hits)
	}
}

func TestOneUDPSocketServesAPrefixAndRepliesFromTheDialledAddress(t *testing.T) {
	w := newWorld(t)
	dns := w.serve(cgroup.Cgroup{}, "udp", "127.0.0.1:16002", "dns", "-origdst")
	w.must("bind", "dns", "udp", "127.0.7.0/24", "1-65535")
	w.must("register", "dns", "--pid", dns.pid())
	for i, host := range sampledHosts {
		for j, port := range sampledPorts {
			if (i+j)%4 != 0 && port != 53 && port != 65535 {
				continue
			}
			addr := fmt.Sprintf("127.0.7.%d:%d", host, port)
			// A connected client takes replies only from the address
			// and port it dialled.
			var conn net.Conn
			err := ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
				var err error
				conn, err = net.Dial("udp", addr)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := conn.Write([]byte("q")); err != nil {
				t.Fatalf("send to %s: %v", addr, err)
			}
			buf := make([]byte, 64)
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != "dns" {
				t.Fatalf("reply from %s: %q, %v", addr, buf[:n], err)
			}
			ev := dns.event(t)
			if ev.Event != "datagram" || ev.Local != addr || ev.Peer != conn.LocalAddr().String() {
				t.Fatalf("datagram to %s from %s: server saw %+v", addr, conn.LocalAddr(), ev)
			}
			conn.Close()
		}
	}
	// An unconnected client sees where the reply came from.
	var pc net.PacketConn
	ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		return err
	})
	defer pc.Close()
	to, _ := net.ResolveUDPAddr("udp", "127.0.7.42:16053")
	pc.SetDeadline(time.Now().Add(3 * time.Second))
	pc.WriteTo([]byte("q"), to)
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "dns" || from.String() != to.String() {
		t.Fatalf("unconnected client: reply %q from %v (%v), want dns from %s", buf[:n], from, err, to)
	}
	if l := w.list(); len(l.Destinations) != 1 || l.Destinations[0].Protocol != "udp" || l.Destinations[0].Hits == 0 {
		t.Fatalf("list: %+v", l)
	}

	// Once the server is gone a connected client is refused (ICMP port
	// unreachable), not left waiting.
	dns.Kill()
	var conn net.Conn
	ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
		var err error
		conn, err = net.Dial("udp", "127.0.7.42:16053")
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	conn.Write([]byte("q"))
	if _, err := conn.Read(buf); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UDP to a label without a socket: %v, want ECONNREFUSED", err)
	}
}

func TestTwoLabelsSharePort80OnTwoPrefixes(t *testing.T) {
	w := newWorld(t)
	nginx := w.serve(cgroup.Cgroup{}, "tcp", "127.0.0.1:16003", "nginx")
	apache := w.serve(cgroup.Cgroup{}, "tcp", "127.0.0.1:16004", "apache")
	w.must("bind", "nginx", "tcp", "127.0.7.0/25", "80")
	w.must("bind", "apache", "tcp", "127.0.7.128/25", "80")
	w.must("register", "nginx", "--pid", nginx.pid())
	w.must("register", "apache", "--pid", apache.pid())
	for _, host := range sampledHosts {
		s := nginx
		if host >= 128 {
			s = apache
		}
		w.expect(s, fmt.Sprintf("127.0.7.%d:80", host))
	}
	// Port 81 is bound by neither.
	w.refused("127.0.7.1:81")
	w.refused("127.0.7.200:81")
	want := map[string]uint64{}
	for _, host := range sampledHosts {
		if host >= 128 {
			want["apache"]++
		} else {
			want["nginx"]++
		}
	}
	for _, d := range w.list().Destinations {
		if d.Hits < want[d.Label] || d.Lookups != d.Hits || d.Misses != 0 {
			t.Fatalf("%s: %+v, want %d lookups and hits", d.Label, d.Counters, want[d.Label])
		}
	}
}

func TestTheMostSpecificBindingWins(t *testing.T) {
	w := newWorld(t)
	servers := map[string]*server{}
	for i, name := range []string{"all", "subnet", "subnet80", "host", "rangeA", "single"} {
		servers[name] = w.serve(cgroup.Cgroup{}, "tcp", fmt.Sprintf("127.0.0.1:%d", 16010+i), name)
	}
	binds := [][]string{
		{"all", "127.0.0.0/8", "0-65535"},
		{"subnet", "127.0.7.0/24", "0-65535"},
		{"subnet80", "127.0.7.0/24", "80"},
		{"host", "127.0.7.7", "16000-16100"},
		{"rangeA", "127.0.7.0/24", "16040-16060"},
		{"single", "127.0.7.0/24", "16050"},
	}
	for _, b := range binds {
		w.must("bind", b[0], "tcp", b[1], b[2])
		w.must("register", b[0], "--pid", servers[b[0]].pid())
	}
	cases := []struct{ addr, want string }{
		{"127.9.9.9:80", "all"},         // only the /8
		{"127.0.7.1:81", "subnet"},      // the /24 over the /8
		{"127.0.7.1:80", "subnet80"},    // one port over all ports, same prefix
		{"127.0.7.7:80", "subnet80"},    // the /32 does not cover port 80
		{"127.0.7.7:16050", "host"},     // the /32 over any /24
		{"127.0.7.8:16050", "single"},   // one port over a range
		{"127.0.7.8:16045", "rangeA"},   // a narrow range over all ports
		{"127.0.7.8:16061", "subnet"},   // just outside the range
		{"127.0.7.8:16039", "subnet"},   // just below it
		{"127.0.8.8:16050", "all"},      // outside the /24
		{"127.0.7.7:16101", "subnet"},   // just outside the /32's range
		{"127.0.7.7:65535", "subnet"},   // last port
		{"127.255.0.1:65535", "all"},    // last port of the /8
		{"127.0.7.255:16040", "rangeA"}, // range start, last address
	}
	for _, c := range cases {
		w.expect(servers[c.want], c.addr)
	}
	// Unbinding the most specific one hands its traffic to the next.
	w.must("unbind", "subnet80", "tcp", "127.0.7.0/24", "80")
	w.expect(servers["subnet"], "127.0.7.1:80")
	w.must("unbind", "single", "tcp", "127.0.7.0/24", "16050")
	w.expect(servers["rangeA"], "127.0.7.8:16050")
	w.must("unbind", "subnet", "tcp", "127.0.7.0/24", "0-65535")
	w.expect(servers["all"], "127.0.7.1:80")
	w.expect(servers["rangeA"], "127.0.7.8:16050")

	// Wrong label, unknown binding, taken binding: clear errors.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"unbind", "all", "tcp", "127.0.7.0/24", "16040-16060"}, "belongs to label rangeA"},
		{[]string{"unbind", "all", "tcp", "127.0.7.0/24", "9"}, "no binding tcp 127.0.7.0/24 9"},
		{[]string{"bind", "other", "tcp", "127.0.0.0/8", "0-65535"}, "already belongs to label all"},
		{[]string{"bind", "x", "tcp", "127.0.7.1/24", "80"}, "host bits set (did you mean 127.0.7.0/24?)"},
		{[]string{"bind", "x", "sctp", "127.0.7.0/24", "80"}, `protocol "sctp" is not tcp or udp`},
		{[]string{"bind", "x", "tcp", "127.0.7.0/24", "90-80"}, "end is below start"},
		{[]string{"bind", "x", "tcp", "127.0.7.0/24", "0"}, "use 0-65535"},
		{[]string{"register", "x", "--pid", "999999999"}, "process 999999999"},
		{[]string{"unregister", "nosuch"}, "no label nosuch"},
	} {
		out, err := w.run(c.args...)
		if err == nil || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%v: %v %q, want one line with %q", c.args, err, out, c.want)
		}
	}
}

func TestAClosedOrUnregisteredSocketRefusesConnections(t *testing.T) {
	w := newWorld(t)
	web := w.serve(cgroup.Cgroup{}, "tcp", "127.0.0.1:16020", "web")
	// A socket bound directly to an address of the prefix never gets
	// the prefix's traffic: the binding claims it.
	w.serve(cgroup.Cgroup{}, "tcp", "127.0.7.9:16021", "squatter")
	w.must("bind", "web", "tcp", "127.0.7.0/24", "16021")
	w.refused("127.0.7.9:16021") // bound, nothing registered yet
	w.must("register", "web", "--pid", web.pid())
	w.expect(web, "127.0.7.9:16021")
	w.must("unregister", "web")
	w.refused("127.0.7.9:16021")
	w.must("register", "web", "--pid", web.pid())
	w.expect(web, "127.0.7.9:16021")
	web.Kill()
	w.refused("127.0.7.9:16021")
	w.refused("127.0.7.10:16021")
	d := w.list().Destinations
	if len(d) != 1 || d[0].Socket != 0 || d[0].Misses < 4 || d[0].Hits < 2 || d[0].Lookups != d[0].Hits+d[0].Misses {
		t.Fatalf("after the socket closed: %+v", d)
	}
	w.must("unbind", "web", "tcp", "127.0.7.0/24", "16021")
	if d := w.list().Destinations; len(d) != 0 {
		t.Fatalf("after unbind: %+v", d)
	}
	// Without the binding the directly bound socket gets its traffic.
	reply, _, err := w.dial("127.0.7.9:16021")
	if err != nil || reply != "squatter" {
		t.Fatalf("without the binding: %q, %v", reply, err)
	}
}

func TestRegisterTakesOnlyASuitableSocket(t *testing.T) {
	w := newWorld(t)
	w.must("bind", "web", "tcp", "127.0.7.0/24", "80")
	// A process in another namespace: its socket cannot serve this one.
	host := testenv.Start(t, cgroup.Cgroup{}, exec.Command(w.probe, "listen", "-proto", "tcp", "-addr", "127.0.0.1:0"))
	host.Line(t, 5*time.Second)
	if out, err := w.run("register", "web", "--pid", fmt.Sprint(host.Cmd.Process.Pid)); err == nil || !strings.Contains(out, "no listening TCP or bound UDP socket in network namespace "+w.ns.Path) {
		t.Fatalf("register of a host process: %v %s", err, out)
	}
	if out, err := w.run("register", "web", "--pid", fmt.Sprint(host.Cmd.Process.Pid), "--fd", socketFD(t, host.Cmd.Process.Pid)); err == nil || !strings.Contains(out, "another network namespace") {
		t.Fatalf("register --fd of a host process's socket: %v %s", err, out)
	}
	// A UDP socket is not taken for a label bound for TCP only.
	udp := w.serve(cgroup.Cgroup{}, "udp", "127.0.0.1:16030", "udp")
	if out, err := w.run("register", "web", "--pid", udp.pid()); err == nil || !strings.Contains(out, "no listening TCP") {
		t.Fatalf("register of a UDP server for a TCP label: %v %s", err, out)
	}
	if out, err := w.run("register", "web", "--pid", udp.pid(), "--fd", "0"); err == nil || !strings.Contains(out, "fd 0 of process") {
		t.Fatalf("register of stdin: %v %s", err, out)
	}
}

func TestAContainerOwnsItsBindings(t *testing.T) {
	w := newWorld(t)
	cgA := testenv.Cgroup(t, "dispatch-a")
	cgB := testenv.Cgroup(t, "dispatch-b")
	testenv.Attach(t, w.dir, "web-a", cgA.Path, `{"dispatch": [
		{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/25", "ports": "80"},
		{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/25", "ports": "16040-16049"}]}`, w.ns.Path)

	l := w.list()
	if len(l.Destinations) != 1 || l.Destinations[0].Owner != "web-a" || len(l.Destinations[0].Bindings) != 2 {
		t.Fatalf("after attach: %+v", l)
	}
	// Nobody binds over a container's prefix and ports.
	out, err := w.run("bind", "intruder", "tcp", "127.0.7.5", "16000-16045")
	if err == nil || !strings.Contains(out, "overlaps tcp 127.0.7.0/25 16040-16049 of container web-a (label web)") {
		t.Fatalf("overlapping bind: %v %s", err, out)
	}
	// Disjoint ones are fine: another port, another prefix.
	w.must("bind", "other", "tcp", "127.0.7.5", "81")
	w.must("bind", "other", "tcp", "127.0.7.128/25", "80")
	// Another container cannot claim them either; its attach fails whole.
	bdoc := `{"dispatch": [{"label": "web-b", "protocol": "tcp", "prefix": "127.0.0.0/8", "ports": "80"}]}`
	attach := exec.Command(w.ctl, "attach", "--cgroup", cgB.Path, "--id", "web-b", "--netns", w.ns.Path, "--policy", "/dev/stdin")
	attach.Stdin = strings.NewReader(bdoc)
	if out, err := attach.CombinedOutput(); err == nil || !strings.Contains(string(out), "container web-a") {
		t.Fatalf("overlapping attach: %v %s", err, out)
	}
	if out, _ := exec.Command(w.ctl, "status").CombinedOutput(); strings.Contains(string(out), "web-b") {
		t.Fatalf("a refused attach left an attachment:\n%s", out)
	}
	attach = exec.Command(w.ctl, "attach", "--cgroup", cgB.Path, "--id", "web-b", "--netns", w.ns.Path, "--policy", "/dev/stdin")
	attach.Stdin = strings.NewReader(`{"dispatch": [{"label": "web", "protocol": "udp", "prefix": "127.0.9.0/24", "ports": "53"}]}`)
	if out, err := attach.CombinedOutput(); err == nil || !strings.Contains(string(out), "web is owned by attachment web-a") {
		t.Fatalf("attach claiming another's label: %v %s", err, out)
	}

	// Only the container's own processes' sockets are registered.
	outsider := w.serve(cgB, "tcp", "127.0.0.1:16031", "outsider")
	out, err = w.run("register", "web", "--pid", outsider.pid())
	if err == nil || !strings.Contains(out, "label web belongs to container web-a") {
		t.Fatalf("register of an outsider: %v %s", err, out)
	}
	web := w.serve(cgA, "tcp", "127.0.0.1:16032", "web")
	w.must("register", "web", "--pid", web.pid())
	w.expect(web, "127.0.7.5:80")
	w.expect(web, "127.0.7.127:16049")

	// A policy change moves the bindings; a kept label keeps its socket.
	set := exec.Command(w.ctl, "policy", "set", "--id", "web-a", "--policy", "/dev/stdin")
	set.Stdin = strings.NewReader(`{"dispatch": [
		{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/25", "ports": "80"},
		{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/25", "ports": "16050"}]}`)
	if out, err := set.CombinedOutput(); err != nil {
		t.Fatalf("policy set: %v %s", err, out)
	}
	w.expect(web, "127.0.7.5:80")
	w.expect(web, "127.0.7.5:16050")
	w.refused("127.0.7.127:16049")
	// Detaching the container removes its bindings and its socket.
	if out, err := exec.Command(w.ctl, "detach", "--id", "web-a").CombinedOutput(); err != nil {
		t.Fatalf("detach: %v %s", err, out)
	}
	for _, d := range w.list().Destinations {
		if d.Label == "web" {
			t.Fatalf("after detach: %+v", d)
		}
	}
	w.refused("127.0.7.5:80")
	w.refused("127.0.7.127:16049")
	// Now the prefix is free.
	w.must("bind", "intruder", "tcp", "127.0.7.5", "16000-16045")
}

// socketFD is the number of a process's first socket fd.
func socketFD(t *testing.T, pid int) string {
	t.Helper()
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range entries {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); strings.HasPrefix(target, "socket:") {
			return e.Name()
		}
	}
	t.Fatalf("process %d has no socket", pid)
	return ""
}

func TestIPv6PrefixAndADualStackSocket(t *testing.T) {
	w := newWorld(t)
	w.ns.IP(t, "-6", "route", "add", "local", "fd16::/64", "dev", "lo")
	// One dual-stack socket serves an IPv6 prefix and an IPv4 one.
	web := w.serve(cgroup.Cgroup{}, "tcp", "[::]:16034", "web") // [::1] would be v6-only
	w.must("bind", "web", "tcp", "fd16::/64", "0-65535")
	w.must("bind", "web", "tcp", "127.0.7.0/24", "443")
	w.must("register", "web", "--pid", web.pid())
	for _, addr := range []string{"[fd16::1]:80", "[fd16::ffff:1]:65535", "[fd16::7:7]:1", "127.0.7.3:443"} {
		w.expect(web, addr)
	}
	w.refused("127.0.7.3:80")
	// A more specific IPv6 binding whose label has no socket refuses.
	w.must("bind", "down", "tcp", "fd16::8/128", "80")
	w.refused("[fd16::8]:80")
	w.expect(web, "[fd16::8]:81")
}

// unmap writes a v4-mapped address (a dual-stack socket's view) as IPv4.
func unmap(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// A container in the host's namespace may dispatch only its own address:
// sk_lookup runs before every host listener, so a wider prefix would take
// the host's traffic (its policy may come from its own annotations).
func TestAHostNetworkContainerDispatchesOnlyItsOwnAddress(t *testing.T) {
	dir := testenv.StateDir(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	cg := testenv.Cgroup(t, "dispatch-host")
	attach := func(doc string) (string, error) {
		cmd := exec.Command(ctl, "attach", "--cgroup", cg.Path, "--id", "hostnet", "--policy", "/dev/stdin")
		cmd.Stdin = strings.NewReader(doc)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, prefix := range []string{"0.0.0.0/0", "127.0.0.0/8", "127.16.9.0/24", "127.16.9.2/32"} {
		out, err := attach(`{"addresses": ["127.16.9.1"], "dispatch": [{"label": "steal", "protocol": "tcp", "prefix": "` + prefix + `", "ports": "16022"}]}`)
		if err == nil || !strings.Contains(out, "dispatch[0].prefix: "+prefix+" is not one of the container's addresses") {
			t.Fatalf("host-network dispatch of %s: %v %s", prefix, err, out)
		}
	}
	if out, _ := exec.Command(ctl, "status").CombinedOutput(); strings.Contains(string(out), "hostnet") {
		t.Fatalf("a refused attach left an attachment:\n%s", out)
	}
	if _, err := os.Stat(dir + "/dispatch"); err == nil {
		entries, _ := os.ReadDir(dir + "/dispatch")
		if len(entries) > 0 {
			t.Fatalf("a refused attach left a dispatcher: %v", entries)
		}
	}
	// Its own address is fine, and detach takes it away again.
	if out, err := attach(`{"addresses": ["127.16.9.1"], "dispatch": [{"label": "mine", "protocol": "tcp", "prefix": "127.16.9.1/32", "ports": "16022-16023"}]}`); err != nil {
		t.Fatalf("host-network dispatch of its own address: %v %s", err, out)
	}
	if out, err := exec.Command(ctl, "detach", "--id", "hostnet").CombinedOutput(); err != nil {
		t.Fatalf("detach: %v %s", err, out)
	}
}
