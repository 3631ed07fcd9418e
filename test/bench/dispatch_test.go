package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/dispatch"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// acceptLoop listens on addr inside the namespace and accepts and closes.
func acceptLoop(b *testing.B, netns, addr string) *net.TCPListener {
	b.Helper()
	var ln net.Listener
	if err := ns.WithNetNSPath(netns, func(ns.NetNS) error {
		var err error
		// Plain TCP: Go's listeners default to MPTCP, which a sockmap
		// does not take.
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp4", addr)
		return err
	}); err != nil {
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
	return ln.(*net.TCPListener)
}

// connects times n connects to addr from inside the namespace.
func connects(b *testing.B, netns string, addr netip.AddrPort, n int, into *[]time.Duration) {
	// connectOnce fails with b.Fatal, which must not run on the
	// namespace's goroutine: it would never return to WithNetNSPath.
	err := ns.WithNetNSPath(netns, func(ns.NetNS) error {
		for i := 0; i < n; i++ {
			d, err := timedConnect(addr)
			if err != nil {
				return fmt.Errorf("connect %s: %w", addr, err)
			}
			*into = append(*into, d)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// loadBindings adds n bindings besides the measured one: half single ports
// on /32s, half ten-port ranges on /28s (so lookups walk several block
// sizes), spread over 100 labels in 127.16.0.0/16.
func loadBindings(b *testing.B, d *dispatch.Dispatcher, n int) {
	b.Helper()
	for i := 0; i < n; i++ {
		bind := dispatch.Binding{Label: fmt.Sprintf("load-%d", i%100), Protocol: policy.TCP}
		if i%2 == 0 {
			bind.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 16, byte(i >> 8), byte(i)}), 32)
			bind.First, bind.Last = uint16(16000+i%1000), uint16(16000+i%1000)
		} else {
			bind.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 16, byte(i >> 8), byte(i) &^ 15}), 28)
			bind.First = uint16(17000 + 10*(i%500))
			bind.Last = bind.First + 9
		}
		if err := d.Bind(bind); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDispatchConnect: connect() latency to an address served by
// dispatch (127.0.7.9:80, bound as 127.0.7.0/24 port 80, its listener on
// 127.0.0.1:16090) versus to a listener bound directly (127.0.0.1:16091 in a
// namespace without dispatch), with 1 and 10,000 bindings loaded. "other"
// is a directly bound listener in the dispatching namespace: what traffic
// no binding matches pays. Short blocks alternate so drift (the machine is
// shared) hits every side alike.
func BenchmarkDispatchConnect(b *testing.B) {
	for _, n := range []int{1, 10_000} {
		b.Run(fmt.Sprintf("bindings=%d", n), func(b *testing.B) {
			dir := testenv.StateDir(b)
			plain, dispatching := testenv.NewNetNS(b), testenv.NewNetNS(b)
			acceptLoop(b, plain.Path, "127.0.0.1:16091")
			acceptLoop(b, dispatching.Path, "127.0.0.1:16092")
			served := acceptLoop(b, dispatching.Path, "127.0.0.1:16090")

			s, err := state.OpenOrLoad(dir)
			if err != nil {
				b.Fatal(err)
			}
			d, err := dispatch.Open(s, dispatching.Path, true)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Bind(dispatch.Binding{Label: "web", Protocol: policy.TCP, Prefix: netip.MustParsePrefix("127.0.7.0/24"), First: 80, Last: 80}); err != nil {
				b.Fatal(err)
			}
			loadBindings(b, d, n-1)
			raw, _ := served.SyscallConn()
			var fd int
			raw.Control(func(f uintptr) { fd = int(f) })
			if _, err := d.Register("web", os.Getpid(), fd); err != nil {
				b.Fatal(err)
			}
			d.Close()
			s.Close()

			// The wall clock is noisy on a shared machine: the program's
			// own run time (BPF statistics, on only while measuring) is
			// reported too.
			stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
			if err != nil {
				b.Fatalf("enable BPF run-time statistics: %v", err)
			}
			defer stats.Close()
			before := dispatchStats(b, dir)
			var direct, dispatched, other []time.Duration
			b.ResetTimer()
			const block = 10
			for done := 0; done < b.N; done += block {
				k := min(block, b.N-done)
				connects(b, plain.Path, netip.MustParseAddrPort("127.0.0.1:16091"), k, &direct)
				connects(b, dispatching.Path, netip.MustParseAddrPort("127.0.7.9:80"), k, &dispatched)
				connects(b, dispatching.Path, netip.MustParseAddrPort("127.0.0.1:16092"), k, &other)
			}
			b.StopTimer()
			after := dispatchStats(b, dir)
			perLookup := float64(after.Runtime-before.Runtime) / float64(after.RunCount-before.RunCount)
			p50 := svcPercentile(direct, 0.5)
			b.ReportMetric(perLookup, "ns/lookup-in-program")
			b.ReportMetric((p50+perLookup)/p50, "ratio-by-program-time")
			b.ReportMetric(p50, "p50-direct-ns")
			b.ReportMetric(svcPercentile(dispatched, 0.5), "p50-dispatched-ns")
			b.ReportMetric(svcPercentile(other, 0.5), "p50-other-ns")
			b.ReportMetric(svcPercentile(dispatched, 0.5)/p50, "p50-ratio")
			b.ReportMetric(svcPercentile(other, 0.5)/p50, "p50-other-ratio")
		})
	}
}

// timedConnect times one connect to addr and closes the socket with an RST
// (SO_LINGER 0), so thousands of connections leave no TIME_WAIT.
func timedConnect(addr netip.AddrPort) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	start := time.Now()
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())})
	return time.Since(start), err
}

// dispatchStats reads the run-time statistics of the state's one
// dispatcher's program.
func dispatchStats(b *testing.B, dir string) *ebpf.ProgramStats {
	b.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "dispatch", "netns-*", "link"))
	if len(paths) != 1 {
		b.Fatalf("want one dispatcher link, found %v", paths)
	}
	l, err := link.LoadPinnedLink(paths[0], nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		b.Fatal(err)
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return st
}
