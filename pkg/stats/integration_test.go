package stats_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// The test binary doubles as the container's TCP client: with
// STATS_CLIENT=ADDR,N,M it connects, sends N bytes, reads M and exits.
func TestMain(m *testing.M) {
	if spec := os.Getenv("STATS_CLIENT"); spec != "" {
		os.Exit(client(spec))
	}
	os.Exit(m.Run())
}

func client(spec string) int {
	parts := strings.Split(spec, ",")
	n, _ := strconv.Atoi(parts[1])
	m, _ := strconv.Atoi(parts[2])
	c, err := net.Dial("tcp", parts[0])
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, n)); err != nil {
		fmt.Println("write:", err)
		return 1
	}
	got, err := io.CopyN(io.Discard, c, int64(m))
	fmt.Println("received", got, err)
	fmt.Println("sent", bytesSent(c))
	return 0
}

// bytesSent is what the kernel says a TCP socket sent: payload bytes,
// retransmissions included (tcpi_bytes_sent).
func bytesSent(c net.Conn) uint64 {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0
	}
	var info *unix.TCPInfo
	raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if info == nil {
		return 0
	}
	return info.Bytes_sent
}

func read(t *testing.T, dir string) map[string]stats.Attachment {
	t.Helper()
	s, err := state.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list, err := stats.Read(s)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]stats.Attachment{}
	for _, a := range list {
		out[a.ID] = a
	}
	return out
}

// headerRoom bounds what one packet adds to the payload: IP and TCP
// headers with options (each segment and each pure ACK is one packet).
const headerRoom = 120

func TestTCPTrafficIsCountedForItsContainerOnly(t *testing.T) {
	dir := testenv.StateDir(t)
	cgA := testenv.Cgroup(t, "stats-a")
	cgB := testenv.Cgroup(t, "stats-b")
	testenv.Attach(t, dir, "a", cgA.Path, `{}`, "")
	testenv.Attach(t, dir, "b", cgB.Path, `{}`, "")

	const sent, received = 3_000_000, 1_000_000
	// The listener runs in the test's (host) cgroup: only the client's
	// side is the container's.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	var serverSent uint64
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if _, err := io.CopyN(io.Discard, c, sent); err != nil {
			served <- err
			return
		}
		_, err = c.Write(make([]byte, received))
		// The client reads to the end, so everything is sent (and any
		// retransmission done) once it exits.
		c.Read(make([]byte, 1))
		serverSent = bytesSent(c)
		served <- err
	}()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("STATS_CLIENT=%s,%d,%d", ln.Addr(), sent, received))
	p := testenv.Start(t, cgA, cmd)
	out := p.Output(t, 30*time.Second)
	if !strings.Contains(out, fmt.Sprintf("received %d <nil>", received)) {
		t.Fatalf("client: %s %s", out, p.Stderr())
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	var clientSent uint64
	fmt.Sscanf(out[strings.Index(out, "sent "):], "sent %d", &clientSent)
	// Retransmissions are traffic too: the bounds are what each side's
	// kernel says it sent (at least the payload), plus headers.
	if clientSent < sent || serverSent < received {
		t.Fatalf("tcpi_bytes_sent: client %d (payload %d), server %d (payload %d)", clientSent, sent, serverSent, received)
	}

	got := read(t, dir)
	a, b := got["a"], got["b"]
	rxp, rxb := a.Total("ingress")
	txp, txb := a.Total("egress")
	t.Logf("a: rx %d packets %d bytes, tx %d packets %d bytes", rxp, rxb, txp, txb)
	for _, c := range a.Traffic {
		tcp4 := c.Family == "ipv4" && c.Protocol == "tcp"
		if !tcp4 && (c.Packets != 0 || c.Bytes != 0) {
			t.Errorf("a: %+v: only IPv4 TCP was sent", c)
		}
		if !tcp4 {
			continue
		}
		payload, wire := uint64(sent), clientSent
		if c.Direction == "ingress" {
			payload, wire = received, serverSent
		}
		if c.Bytes < payload || c.Bytes > wire+c.Packets*headerRoom {
			t.Errorf("a %s: %d bytes in %d packets, want at least the %d of payload and at most the %d the kernel sent plus %d per packet",
				c.Direction, c.Bytes, c.Packets, payload, wire, headerRoom)
		}
	}
	for _, c := range b.Traffic {
		if c.Packets != 0 || c.Bytes != 0 {
			t.Errorf("b sent nothing but counts %+v", c)
		}
	}
	for _, at := range []stats.Attachment{a, b} {
		for reason, n := range at.Decisions {
			if n != 0 {
				t.Errorf("%s: decision %s = %d, want 0", at.ID, reason, n)
			}
		}
	}
}

// Each refused or remapped bind increments exactly its own reason.
func TestBindDecisionsCountExactlyTheirReason(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "stats-bind")
	testenv.Attach(t, dir, "bind", cg.Path, `{"addresses": ["127.0.0.1"], "allowedPorts": ["14010"],
		"portMappings": [{"containerPort": 14020, "hostPort": 14021}]}`, "")
	probe := testenv.Binary(t, "./test/sockprobe")

	steps := []struct {
		addr   string
		errno  string
		reason stats.Reason
	}{
		{"127.0.0.1:14011", "EPERM", stats.BindRefusedPort},
		{"192.0.2.14:14010", "EPERM", stats.BindRefusedAddress},
		{"[2001:db8::14]:14010", "EPERM", stats.BindRefusedAddress},
		{"127.0.0.1:14020", "", stats.BindRemapped},
	}
	want := map[string]uint64{}
	for _, r := range stats.Reasons() {
		want[r.String()] = 0
	}
	for _, st := range steps {
		p := testenv.Start(t, cg, exec.Command(probe, "listen", "-proto", "tcp", "-addr", st.addr))
		r := testenv.ParseProbe(t, p.Line(t, 5*time.Second))
		p.Kill()
		if r.Errno != st.errno {
			t.Fatalf("bind %s: %+v, want errno %q", st.addr, r, st.errno)
		}
		want[st.reason.String()]++
		got := read(t, dir)["bind"].Decisions
		for reason, n := range want {
			if got[reason] != n {
				t.Errorf("after bind %s: %s = %d, want %d", st.addr, reason, got[reason], n)
			}
		}
	}
}

// Add (the userspace side, used for terminated sockets) adds to the
// attachment's entry and skips keys without one.
func TestAddCountsUserspaceDecisions(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "stats-add")
	a := testenv.Attach(t, dir, "add", cg.Path, `{}`, "")
	m, err := stats.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := 0; i < 3; i++ {
		if err := m.Add(a.CounterKey(), stats.SocketTerminated, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Add(a.CounterKey()+12345, stats.SocketTerminated, 1); err != nil {
		t.Fatalf("a key without an entry: %v", err)
	}
	if got := read(t, dir)["add"].Decision(stats.SocketTerminated); got != 6 {
		t.Errorf("socket_terminated = %d, want 6", got)
	}
	testenv.Detach(t, dir, "add")
	// Detach removes the entries: a re-attach starts from zero.
	testenv.Attach(t, dir, "add", cg.Path, `{}`, "")
	if got := read(t, dir)["add"].Decision(stats.SocketTerminated); got != 0 {
		t.Errorf("after re-attach socket_terminated = %d, want 0", got)
	}
}

// Each way the packet path finds a socket's attachment counts a datagram
// once, under its own attachment and protocol: a socket of the attached
// cgroup itself (the fast path, bpf/accounting.h), one of a cgroup nested
// below it (the ancestor walk) and one with socket storage (a policy with
// a mark).
func TestEveryOwnerPathCountsEachDatagramOnce(t *testing.T) {
	dir := testenv.StateDir(t)
	guardtest.ListenUDP(t, "127.13.4.1:13015")
	direct := testenv.Cgroup(t, "stats-direct")
	nested := testenv.Cgroup(t, "stats-nested")
	marked := testenv.Cgroup(t, "stats-marked")
	testenv.Attach(t, dir, "direct", direct.Path, `{}`, "")
	testenv.Attach(t, dir, "nested", nested.Path, `{}`, "")
	testenv.Attach(t, dir, "marked", marked.Path, `{"mark": 7}`, "")
	const datagrams = 5
	for _, cg := range []cgroup.Cgroup{direct, testenv.ChildCgroup(t, nested, "child"), marked} {
		p := guardtest.Start(t, cg, nil)
		for i := 0; i < datagrams; i++ {
			p.SendTo(t, "127.13.4.1:13015", "")
		}
	}
	got := read(t, dir)
	for _, id := range []string{"direct", "nested", "marked"} {
		for _, c := range got[id].Traffic {
			want := uint64(0)
			if c.Direction == "egress" && c.Family == "ipv4" && c.Protocol == "udp" {
				want = datagrams
			}
			if c.Packets != want {
				t.Errorf("%s: %+v, want %d packets", id, c, want)
			}
		}
	}
}
