package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Termination scans every socket of a network namespace, so its cost grows
// with the sockets open there, not with those it destroys. This benchmark
// opens N TCP sockets in the host namespace (host processes' loopback
// connections held by several processes, which the iterator walks and
// skips) and times the
// termination of one backend's clients: terminateClients connections made
// from an attached cgroup, re-made before every iteration.
//
// Reported: ns/op (one terminate.Backend call: open the state, load the
// iterators, scan, destroy), ns-scan/op (the scan and destroy alone),
// sockets-scanned/op and scanned-sockets/s (over the scan alone).

// terminateClients is how many clients the removed backend has.
const terminateClients = 10

// socketCounts are the N of the sub-benchmarks; the last is as many as
// this benchmark aims for on one machine.
var socketCounts = []int{1_000, 10_000, 100_000}

func BenchmarkTerminate(b *testing.B) {
	dir := testenv.StateDir(b)
	ctr := testenv.Cgroup(b, "bench-term")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		b.Fatal(err)
	}
	_, err = s.Attach(state.AttachRequest{ID: "bench-term", Cgroup: ctr.Path})
	s.Close()
	if err != nil {
		b.Fatal(err)
	}

	backend := newServer(b, "127.0.0.2:0")
	backendAddr := netip.MustParseAddrPort(backend.ln.Addr().String())
	background := &sockets{}

	for _, n := range socketCounts {
		background.grow(b, n)
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) {
			var scanned uint64
			var scanTime time.Duration
			b.ResetTimer()
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				back := enterCgroup(b, ctr)
				clients := dial(b, backendAddr.String(), terminateClients)
				back()

				b.StartTimer()
				report, err := terminate.Backend(dir, backendAddr, "tcp", false)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if report.Destroyed != terminateClients {
					b.Fatalf("destroyed %d sockets, want %d: %+v", report.Destroyed, terminateClients, report)
				}
				for _, ns := range report.Namespaces {
					scanned += ns.Scanned
					scanTime += ns.ScanTime
				}
				for _, c := range clients {
					c.Close()
				}
				backend.closeConns()
			}
			b.ReportMetric(float64(scanned)/float64(b.N), "sockets-scanned/op")
			// The scan rate counts only the iterators' run: loading the
			// programs (mostly parsing the kernel's BTF for CO-RE and
			// the kfunc) is a fixed cost per call, in ns/op.
			b.ReportMetric(float64(scanned)/scanTime.Seconds(), "scanned-sockets/s")
			b.ReportMetric(float64(scanTime.Nanoseconds())/float64(b.N), "ns-scan/op")
		})
	}
}

// server accepts and holds TCP connections.
type server struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newServer(b *testing.B, addr string) *server {
	b.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	s := &server{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	b.Cleanup(func() { ln.Close(); s.closeConns() })
	return s
}

func (s *server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func dial(b *testing.B, addr string, n int) []net.Conn {
	b.Helper()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatalf("dial %s (connection %d): %v", addr, i, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// sockets is the background: host processes holding loopback
// connections. A process may not hold more than RLIMIT_NOFILE descriptors
// (and may not raise it here), so the sockets are spread over several
// holder processes, each the test binary running TestSocketHolder: a
// listener and connectionsPerHolder connections to it, both ends held.
type sockets struct {
	holders []*exec.Cmd
	total   int
}

const connectionsPerHolder = 8_000

func (s *sockets) grow(b *testing.B, n int) {
	b.Helper()
	for s.total < n {
		conns := min(connectionsPerHolder, (n-s.total+1)/2)
		cmd := exec.Command(os.Args[0], "-test.run=^TestSocketHolder$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("PORTCULLIS_SOCKET_HOLDER=%d", conns))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { stdin.Close(); cmd.Wait() })
		line, err := bufio.NewReader(stdout).ReadString('\n')
		var held int
		if _, serr := fmt.Sscanf(line, "holding %d", &held); err != nil || serr != nil {
			b.Fatalf("socket holder: %q: %v %v", line, err, serr)
		}
		s.holders = append(s.holders, cmd)
		s.total += held
	}
}

// TestSocketHolder is not a test: it is the body of the holder processes
// BenchmarkTerminate starts, and returns at once otherwise.
func TestSocketHolder(t *testing.T) {
	conns, _ := strconv.Atoi(os.Getenv("PORTCULLIS_SOCKET_HOLDER"))
	if conns == 0 {
		return
	}
	// No keepalive (Go's default is 15 s): the probes of thousands of
	// connections made in the same second fire in bursts, overflow the
	// loopback backlog (net.core.netdev_max_backlog) and, after nine
	// lost in a row, the kernel aborts the connections: the background
	// shrank after two and a half minutes (issue 9).
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, conns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var held []net.Conn
	for i := 0; i < conns; i++ {
		c, err := (&net.Dialer{KeepAlive: -1}).Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		held = append(held, c, <-accepted)
	}
	// Reset rather than close at exit: TIME_WAIT sockets left behind
	// would be scanned by the next run.
	for _, c := range held {
		c.(*net.TCPConn).SetLinger(0)
	}
	fmt.Printf("holding %d\n", len(held)+1)
	io.Copy(io.Discard, os.Stdin) // until the benchmark closes stdin
	// Without this the connections are garbage once the loop above is
	// done, and the next GC (at the latest Go's forced one, after two
	// minutes) closes them through their finalizers: the background
	// shrank during long runs too (issue 9).
	runtime.KeepAlive(held)
	runtime.KeepAlive(ln)
}
