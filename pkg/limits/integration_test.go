package limits_test

// Integration tests on the real kernel: a connprobe in an attached cgroup
// opens connections to listeners of the test process and meets its caps.

import (
	"net"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/limits"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func attach(t *testing.T, doc string) (string, cgroup.Cgroup, *guardtest.Probe) {
	t.Helper()
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "limits")
	testenv.Attach(t, dir, "lim", cg.Path, doc, "")
	return dir, cg, guardtest.Start(t, cg, nil)
}

func usage(t *testing.T, dir string) *limits.Usage {
	t.Helper()
	s, err := state.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Get("lim")
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.Usage(a)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// waitLive waits for the live count to reach want: a reset reaches the
// client's socket asynchronously.
func waitLive(t *testing.T, dir string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		u := usage(t, dir)
		if u.Live == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("live connections: want %d, have %+v", want, u)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPerDestinationCap(t *testing.T) {
	a := guardtest.Listen(t, "127.13.0.1:13001")
	guardtest.Listen(t, "127.13.0.1:13002")
	dir, _, p := attach(t, `{"connectionLimits": {"perDestination": 3}}`)

	var ids []int
	for i := 0; i < 3; i++ {
		ids = append(ids, p.Connect(t, "tcp", a.Addr, ""))
	}
	p.Connect(t, "tcp", a.Addr, "EAGAIN")
	// Another destination has its own count; v4-mapped is the same one.
	p.Connect(t, "tcp", "127.13.0.1:13002", "")
	p.Connect(t, "tcp", "[::ffff:127.13.0.1]:13001", "EAGAIN")
	if u := usage(t, dir); u.Live != 4 || len(u.Destinations) != 2 || u.Destinations[0].Count != 3 ||
		u.Destinations[0].Destination != "127.13.0.1:13001" {
		t.Errorf("usage = %+v, want 4 live, 3 to %s", u, a.Addr)
	}

	// Closing one frees its slot at once.
	p.Close(t, ids[0])
	ids[0] = p.Connect(t, "tcp", a.Addr, "")
	p.Connect(t, "tcp", a.Addr, "EAGAIN")

	// A host process is never limited.
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", a.Addr)
		if err != nil {
			t.Fatalf("host connect %d: %v", i, err)
		}
		defer c.Close()
	}

	// Connections the server resets stop counting while the client still
	// holds its sockets (the TCP_CLOSE state callback).
	a.ResetAll()
	waitLive(t, dir, 1)
	p.Connect(t, "tcp", a.Addr, "")
}

func TestTotalCapAcrossDestinations(t *testing.T) {
	guardtest.Listen(t, "127.13.0.2:13003")
	guardtest.Listen(t, "127.13.0.3:13003")
	dir, _, p := attach(t, `{"connectionLimits": {"perDestination": 10, "total": 4}}`)
	first := p.Connect(t, "tcp", "127.13.0.2:13003", "")
	p.Connect(t, "tcp", "127.13.0.2:13003", "")
	p.Connect(t, "tcp", "127.13.0.3:13003", "")
	p.Connect(t, "tcp", "127.13.0.3:13003", "")
	p.Connect(t, "tcp", "127.13.0.3:13003", "EAGAIN")
	p.Connect(t, "tcp", "127.13.0.2:13003", "EAGAIN")
	p.Close(t, first)
	p.Connect(t, "tcp", "127.13.0.3:13003", "")
	if u := usage(t, dir); u.Live != 4 || u.Total != 4 {
		t.Errorf("usage = %+v, want 4 live of 4", u)
	}
	// A refused connect gives its slot back.
	p.Close(t, first+3)
	p.Connect(t, "tcp", "127.13.0.9:13003", "ECONNREFUSED")
	p.Connect(t, "tcp", "127.13.0.2:13003", "")
}

func TestConnectedUDPCounted(t *testing.T) {
	guardtest.ListenUDP(t, "127.13.0.4:13004")
	dir, _, p := attach(t, `{"connectionLimits": {"perDestination": 2}}`)
	first := p.Connect(t, "udp", "127.13.0.4:13004", "")
	p.Connect(t, "udp", "[::ffff:127.13.0.4]:13004", "")
	p.Connect(t, "udp", "127.13.0.4:13004", "EAGAIN")
	// Unconnected datagrams hold no slot.
	p.SendTo(t, "127.13.0.4:13004", "")
	p.Close(t, first)
	p.Connect(t, "udp", "127.13.0.4:13004", "")
	if u := usage(t, dir); u.Live != 2 || u.Destinations[0].Protocol != "udp" {
		t.Errorf("usage = %+v, want 2 live udp", u)
	}
}

// A UDP socket that connects elsewhere moves its slot; a move to a
// destination at its cap is refused and the socket keeps the slot it has.
func TestConnectedUDPMoves(t *testing.T) {
	guardtest.ListenUDP(t, "127.13.0.5:13005")
	guardtest.ListenUDP(t, "127.13.0.6:13005")
	dir, _, p := attach(t, `{"connectionLimits": {"perDestination": 1, "total": 2}}`)
	s1 := p.Connect(t, "udp", "127.13.0.5:13005", "")
	if r := p.Do(t, "reconnect %d 127.13.0.6:13005", s1); !r.OK {
		t.Fatalf("moving to a free destination: %+v", r)
	}
	s2 := p.Connect(t, "udp", "127.13.0.5:13005", "") // freed by the move
	if r := p.Do(t, "reconnect %d 127.13.0.6:13005", s2); r.Errno != "EAGAIN" {
		t.Fatalf("moving to a destination at its cap: %+v, want EAGAIN", r)
	}
	p.Connect(t, "udp", "127.13.0.5:13005", "EAGAIN") // s2 still holds it
	if u := usage(t, dir); u.Live != 2 || len(u.Destinations) != 2 {
		t.Errorf("usage = %+v, want one socket on each destination", u)
	}
	// Connecting again to the same destination changes nothing.
	if r := p.Do(t, "reconnect %d 127.13.0.6:13005", s1); !r.OK {
		t.Fatalf("reconnecting to the same destination: %+v", r)
	}
	if u := usage(t, dir); u.Live != 2 {
		t.Errorf("usage after a same-destination reconnect = %+v", u)
	}
}
