package bench

import (
	"net"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// hostCgroups returns two cgroups for a host process (one in no
// container, in the host's network namespace): one below a parent that
// carries the namespace programs of a pod's policy, as the cgroup v2 root
// does while pods exist, and one below a parent without them. Using a
// parent of the test's own instead of the root keeps the cost off every
// other process on the machine while measuring the same thing.
func hostCgroups(b *testing.B) (dir string, under, plain cgroup.Cgroup) {
	b.Helper()
	parent := testenv.Cgroup(b, "bench-netns-parent")
	under = testenv.ChildCgroup(b, parent, "host")
	plain = testenv.ChildCgroup(b, testenv.Cgroup(b, "bench-netns-plain"), "host")
	pod := testenv.NewNetNS(b)
	pod.IP(b, "addr", "add", "10.20.9.2/32", "dev", "lo")
	p, err := policy.Parse([]byte(`{"addresses": ["10.20.9.2"], "allowedPorts": ["1024-65535"]}`))
	if err != nil {
		b.Fatal(err)
	}
	dir = testenv.StateDir(b)
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "pod", Policy: p, NetNS: pod.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
		b.Fatal(err)
	}
	return dir, under, plain
}

// compareHost runs op in both cgroups, alternating blocks, and reports
// both latencies and their ratio (the goal is at most 1.02).
//
// On a shared, loaded machine the wall-clock ratio is noisy, so the time
// the namespace programs themselves spent (the kernel's BPF run-time
// statistics, on only while the benchmark runs) is reported too, per op and
// as the ratio it gives against the plain side.
func compareHost(b *testing.B, name string, op func(b *testing.B)) {
	dir, under, plain := hostCgroups(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	before := programsRuntime(b, dir)
	perOp := compareIn(b, name, under, plain, op)
	spent := (programsRuntime(b, dir) - before) / time.Duration(b.N)
	b.ReportMetric(float64(spent.Nanoseconds()), "ns/op-in-netns-programs")
	b.ReportMetric(float64(perOp+spent)/float64(perOp), "ratio-by-program-time")
}

// programsRuntime is the total run time of the state's namespace programs.
func programsRuntime(b *testing.B, dir string) time.Duration {
	b.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "netns", "progs", "*"))
	if len(paths) == 0 {
		b.Fatal("no namespace programs pinned")
	}
	var total time.Duration
	for _, path := range paths {
		p, err := ebpf.LoadPinnedProgram(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			b.Fatal(err)
		}
		total += st.Runtime
	}
	return total
}

// BenchmarkHostBindNetNSPrograms: socket + bind(0.0.0.0:0) + close by a
// host process, with and without the namespace programs on its ancestor.
func BenchmarkHostBindNetNSPrograms(b *testing.B) {
	compareHost(b, "bind", bindAny)
}

// BenchmarkHostConnectNetNSPrograms: a TCP connect to 127.0.0.1 and close.
func BenchmarkHostConnectNetNSPrograms(b *testing.B) {
	compareHost(b, "connect", connectLoopback(b))
}

// BenchmarkHostSendmsgNetNSPrograms: a UDP socket sending 16 unconnected
// datagrams to 127.0.0.1 (sendmsg4 runs for each), then closed. The
// socket is made in the op: cgroup programs apply by the cgroup a socket
// was created in.
func BenchmarkHostSendmsgNetNSPrograms(b *testing.B) {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: sink.LocalAddr().(*net.UDPAddr).Port}
	msg := []byte("x")
	compareHost(b, "socket-16sendmsg-close", func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < 16; i++ {
			if err := unix.Sendto(fd, msg, 0, to); err != nil {
				b.Fatal(err)
			}
		}
		unix.Close(fd)
	})
}
