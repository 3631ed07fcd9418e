package bench

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// attachedAndPlain returns two empty cgroups, one with a typical policy
// attached and one without.
func attachedAndPlain(b *testing.B) (attached, plain cgroup.Cgroup) {
	b.Helper()
	dir := testenv.StateDir(b)
	attached = testenv.Cgroup(b, "bench-with")
	plain = testenv.Cgroup(b, "bench-without")
	p, err := policy.Parse([]byte(`{"addresses": ["127.0.0.2", "::1"], "allowedPorts": ["1024-65535"],
		"portMappings": [{"containerPort": 80, "hostPort": 18080}]}`))
	if err != nil {
		b.Fatal(err)
	}
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "bench", Cgroup: attached.Path, Policy: p}); err != nil {
		b.Fatal(err)
	}
	return attached, plain
}

// compare runs op b.N times in each cgroup, alternating blocks so drift
// hits both sides, and reports both latencies and their ratio.
func compare(b *testing.B, name string, op func(b *testing.B)) {
	attached, plain := attachedAndPlain(b)
	compareIn(b, name, attached, plain, op)
}

// compareIn is compare in cgroups the caller made. It returns the plain
// side's time per op. The ratio is that of the two sides' median block
// (per op): a block that a garbage collection, a migration to the other
// CPU or another process's burst hit is an outlier on one side, and the
// median leaves it out where a sum would not; the ns/op figures are the
// plain means.
func compareIn(b *testing.B, name string, attached, plain cgroup.Cgroup, op func(b *testing.B)) time.Duration {
	var with, without time.Duration
	var withBlocks, withoutBlocks []float64
	const block = 100
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		for _, side := range []struct {
			cg     cgroup.Cgroup
			sum    *time.Duration
			blocks *[]float64
		}{{plain, &without, &withoutBlocks}, {attached, &with, &withBlocks}} {
			back := enterCgroup(b, side.cg)
			start := time.Now()
			for i := 0; i < n; i++ {
				op(b)
			}
			took := time.Since(start)
			*side.sum += took
			*side.blocks = append(*side.blocks, float64(took)/float64(n))
			back()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(without.Nanoseconds())/float64(b.N), "ns/"+name+"-plain")
	b.ReportMetric(float64(with.Nanoseconds())/float64(b.N), "ns/"+name+"-portcullis")
	b.ReportMetric(medianOf(withBlocks)/medianOf(withoutBlocks), "ratio")
	return without / time.Duration(b.N)
}

// BenchmarkBind: socket + bind(0.0.0.0:0) + close. With portcullis the
// bind is rewritten to the pinned address.
func BenchmarkBind(b *testing.B) {
	compare(b, "bind", bindAny)
}

// bindAny is socket + bind(0.0.0.0:0) + close.
func bindAny(b *testing.B) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
		b.Fatal(err)
	}
	unix.Close(fd)
}

// BenchmarkConnect: a TCP connect to a listener on 127.0.0.1 and close.
// With portcullis the socket is first bound to the pinned address.
func BenchmarkConnect(b *testing.B) {
	compare(b, "connect", connectLoopback(b))
}

// connectLoopback starts a listener on 127.0.0.1 and returns an op that
// connects to it and closes.
func connectLoopback(b *testing.B) func(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	return func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		// Close with RST so thousands of connections leave no TIME_WAIT.
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	}
}
