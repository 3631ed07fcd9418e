package bench

import (
	"runtime"
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

// compare runs op b.N times in three cgroups, alternating blocks so drift
// hits all of them: a plain one, one with no-op programs on the hooks the
// attachment uses (the floor: what the kernel charges for running any
// program there), and the attached one. It reports the latencies, the
// attachment's ratio and the floor's.
func compare(b *testing.B, name string, op func(b *testing.B)) {
	attached, plain := attachedAndPlain(b)
	floor := floorLike(b, attached, "bench-floor")
	compareSides(b, name, plain, []side{{"floor", floor}, {"portcullis", attached}}, op)
}

// compareIn is compare in cgroups the caller made, without the floor. It
// returns the plain side's time per op.
func compareIn(b *testing.B, name string, attached, plain cgroup.Cgroup, op func(b *testing.B)) time.Duration {
	return compareSides(b, name, plain, []side{{"portcullis", attached}}, op)
}

// side is a cgroup a comparison runs op in besides the plain one.
type side struct {
	label string
	cg    cgroup.Cgroup
}

// compareSides runs op in plain and in each side, a block of 100 at a
// time in turn, and returns the plain side's time per op. A side's ratio
// is that of its median block to the plain side's (per op): a block that
// a garbage collection, a migration to the other CPU or another process's
// burst hit is an outlier on one side, and the median leaves it out where
// a sum would not; the ns/op figures are the means. The benchmark's
// goroutine keeps its thread, so that no block runs partly on another
// thread the runtime switched it to after a long syscall.
func compareSides(b *testing.B, name string, plain cgroup.Cgroup, sides []side, op func(b *testing.B)) time.Duration {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	all := append([]side{{"plain", plain}}, sides...)
	sums := make([]time.Duration, len(all))
	blocks := make([][]float64, len(all))
	const block = 100
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		for i, s := range all {
			back := enterCgroup(b, s.cg)
			start := time.Now()
			for j := 0; j < n; j++ {
				op(b)
			}
			took := time.Since(start)
			sums[i] += took
			blocks[i] = append(blocks[i], float64(took)/float64(n))
			back()
		}
	}
	b.StopTimer()
	for i, s := range all {
		b.ReportMetric(float64(sums[i].Nanoseconds())/float64(b.N), "ns/"+name+"-"+s.label)
	}
	for i, s := range sides {
		unit := "ratio"
		if s.label != "portcullis" {
			unit = s.label + "-ratio"
		}
		b.ReportMetric(medianOf(blocks[i+1])/medianOf(blocks[0]), unit)
	}
	return sums[0] / time.Duration(b.N)
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
// connects to it and closes. The listener is served by a thread of its
// own blocked in accept4, which closes each connection: a net.Listener's
// goroutine is woken through the runtime's poller and sets options on
// every accepted socket, and that scheduling moved a block's time by a
// quarter and the two sides' difference by more than the programs' own
// cost (docs/performance.md). The accepted sockets are the listener's
// cgroup's, so no program runs for them on either side.
func connectLoopback(b *testing.B) func(b *testing.B) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		b.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		b.Fatal(err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		for {
			c, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			if err != nil {
				return
			}
			unix.Close(c)
		}
	}()
	// shutdown wakes the blocked accept4 (EINVAL), then the fd is closed.
	b.Cleanup(func() {
		unix.Shutdown(lfd, unix.SHUT_RDWR)
		unix.Close(lfd)
	})
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
