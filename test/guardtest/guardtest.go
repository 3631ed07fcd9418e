// Package guardtest drives connprobe, the many-socket client of the
// connection-limit and egress tests, from inside a cgroup.
package guardtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Probe is a running connprobe.
type Probe struct {
	proc  *testenv.Proc
	stdin io.WriteCloser
}

// Reply is one connprobe answer.
type Reply struct {
	OK    bool   `json:"ok"`
	ID    int    `json:"id"`
	Errno string `json:"errno"`
	Error string `json:"error"`
}

// Start runs connprobe in cg (zero: where the test runs); wrap, when not
// nil, turns its argv into the command to run (a netns, a runtime).
func Start(t testing.TB, cg cgroup.Cgroup, wrap func(argv ...string) *exec.Cmd) *Probe {
	t.Helper()
	bin := testenv.Binary(t, "./test/connprobe")
	cmd := exec.Command(bin)
	if wrap != nil {
		cmd = wrap(bin)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	return &Probe{proc: testenv.Start(t, cg, cmd), stdin: stdin}
}

// Do sends one command and returns the answer.
func (p *Probe) Do(t testing.TB, format string, args ...any) Reply {
	t.Helper()
	fmt.Fprintf(p.stdin, format+"\n", args...)
	line := p.proc.Line(t, 10*time.Second)
	var r Reply
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("connprobe printed %q: %v", line, err)
	}
	return r
}

// Connect connects a new socket and fails the test unless the outcome is
// want ("" for success, else an errno name); it returns the socket's id.
func (p *Probe) Connect(t testing.TB, proto, addr, want string) int {
	t.Helper()
	r := p.Do(t, "connect %s %s", proto, addr)
	got := r.Errno
	if r.OK {
		got = ""
	} else if got == "" {
		got = r.Error
	}
	if got != want {
		t.Fatalf("connect %s %s: want %q, got %+v", proto, addr, or(want, "success"), r)
	}
	return r.ID
}

// SendTo sends one unconnected datagram and checks the outcome as Connect.
func (p *Probe) SendTo(t testing.TB, addr, want string) {
	t.Helper()
	r := p.Do(t, "sendto %s", addr)
	if got := r.Errno; (r.OK && want != "") || (!r.OK && got != want) {
		t.Fatalf("sendto %s: want %q, got %+v", addr, or(want, "success"), r)
	}
}

// Close closes socket id.
func (p *Probe) Close(t testing.TB, id int) {
	t.Helper()
	if r := p.Do(t, "close %d", id); !r.OK {
		t.Fatalf("close %d: %+v", id, r)
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Listener accepts TCP connections on addr in the test's own process (a
// host process, never attached) and holds them until the test ends.
type Listener struct {
	Addr  string
	mu    sync.Mutex
	conns []net.Conn
}

// Listen starts a Listener.
func Listen(t testing.TB, addr string) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	l := &Listener{Addr: addr}
	t.Cleanup(func() {
		ln.Close()
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.conns = append(l.conns, c)
			l.mu.Unlock()
		}
	}()
	return l
}

// ResetAll closes every accepted connection with a reset (SO_LINGER 0).
func (l *Listener) ResetAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	l.conns = nil
}

// ListenUDP binds a UDP socket on addr in the test's process.
func ListenUDP(t testing.TB, addr string) {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
}

// Alive checks that socket id has no error and still sends.
func (p *Probe) Alive(t testing.TB, id int) {
	t.Helper()
	for _, cmd := range []string{"check", "send"} {
		if r := p.Do(t, "%s %d", cmd, id); !r.OK {
			t.Fatalf("socket %d: want it alive, %s got %+v", id, cmd, r)
		}
	}
}

// Aborted checks that socket id was destroyed: its pending error is
// ECONNABORTED.
func (p *Probe) Aborted(t testing.TB, id int) {
	t.Helper()
	if r := p.Do(t, "check %d", id); r.Errno != "ECONNABORTED" {
		t.Fatalf("socket %d: want ECONNABORTED, got %+v", id, r)
	}
}

// Serve starts TCP and UDP sockprobe listeners on addr inside cg.
func Serve(t testing.TB, cg cgroup.Cgroup, addr string) {
	t.Helper()
	probe := testenv.Binary(t, "./test/sockprobe")
	for _, proto := range []string{"tcp", "udp"} {
		p := testenv.Start(t, cg, exec.Command(probe, "listen", "-proto", proto, "-addr", addr))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("listen %s %s: %+v", proto, addr, r)
		}
	}
}
