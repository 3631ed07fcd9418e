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

// hostCgroups returns two cgroups for a host process (one in no
// container, in the host's network namespace): one below a parent that
// carries the namespace programs of a pod's policy, as the cgroup v2 root
// does while pods exist, and one below a parent without them. Using a
// parent of the test's own instead of the root keeps the cost off every
// other process on the machine while measuring the same thing.
func hostCgroups(b *testing.B) (under, plain cgroup.Cgroup) {
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
	s, err := state.OpenOrLoad(testenv.StateDir(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "pod", Policy: p, NetNS: pod.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
		b.Fatal(err)
	}
	return under, plain
}

// compareHost runs op in both cgroups, alternating blocks, and reports
// both latencies and their ratio (the goal is at most 1.02).
func compareHost(b *testing.B, name string, op func(b *testing.B)) {
	under, plain := hostCgroups(b)
	var with, without time.Duration
	const block = 100
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		for _, side := range []struct {
			cg  cgroup.Cgroup
			sum *time.Duration
		}{{plain, &without}, {under, &with}} {
			back := enterCgroup(b, side.cg)
			start := time.Now()
			for i := 0; i < n; i++ {
				op(b)
			}
			*side.sum += time.Since(start)
			back()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(without.Nanoseconds())/float64(b.N), "ns/"+name+"-plain")
	b.ReportMetric(float64(with.Nanoseconds())/float64(b.N), "ns/"+name+"-netns-programs")
	b.ReportMetric(float64(with)/float64(without), "ratio")
}

// BenchmarkHostBindNetNSPrograms: socket + bind(0.0.0.0:0) + close by a
// host process, with and without the namespace programs on its ancestor.
func BenchmarkHostBindNetNSPrograms(b *testing.B) {
	compareHost(b, "bind", func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	})
}

// BenchmarkHostConnectNetNSPrograms: a TCP connect to 127.0.0.1 and close.
func BenchmarkHostConnectNetNSPrograms(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
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
	compareHost(b, "connect", func(b *testing.B) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	})
}

// BenchmarkHostSendmsgNetNSPrograms: one unconnected UDP datagram to
// 127.0.0.1 (sendmsg4 runs for each).
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
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: sink.LocalAddr().(*net.UDPAddr).Port}
	msg := []byte("x")
	compareHost(b, "sendmsg", func(b *testing.B) {
		if err := unix.Sendto(fd, msg, 0, to); err != nil {
			b.Fatal(err)
		}
	})
}
