package bench

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkTerminate10kAmong100k: one backend's 10,000 clients in an
// attached container are destroyed among 100,000 TCP sockets in the host
// namespace (the clients, the backend's ends of their connections and
// 80,000 loopback sockets of host processes), one terminate.Backend call.
// Beside it, in the same rounds, the same call for a backend with no
// clients: the scan of the 100,000 alone. Setting up 10,000 clients takes
// about a second, so the benchmark measures scaleRounds rounds whatever
// b.N is, and reports the medians:
//
//	ms-destroy-10k   the call that destroys the 10,000 (goal: <= 100 ms)
//	ms-scan-only     the call that destroys nothing
//	ratio            the first over the second
//	destroyed/s      10,000 over the first
//
// Every round checks that all 10,000 clients saw ECONNABORTED.
func BenchmarkTerminate10kAmong100k(b *testing.B) {
	scaleOnce.Do(func() { scaleResults, scaleErr = measureTerminate10k(b) })
	if scaleErr != nil {
		b.Fatal(scaleErr)
	}
	destroy, scan := scaleResults[0], scaleResults[1]
	b.ReportMetric(float64(destroy.Microseconds())/1000, "ms-destroy-10k")
	b.ReportMetric(float64(scan.Microseconds())/1000, "ms-scan-only")
	b.ReportMetric(destroy.Seconds()/scan.Seconds(), "ratio")
	b.ReportMetric(scaleClients/destroy.Seconds(), "destroyed/s")
}

const (
	scaleClients    = 10_000
	scalePerProcess = 5_000 // under RLIMIT_NOFILE (20,000)
	scaleSockets    = 100_000
	scaleRounds     = 5
)

var (
	scaleOnce    sync.Once
	scaleResults [2]time.Duration
	scaleErr     error
)

func measureTerminate10k(b *testing.B) ([2]time.Duration, error) {
	dir := testenv.StateDir(b)
	ctr := testenv.Cgroup(b, "bench-term-10k")
	testenv.Attach(b, dir, "bench-term-10k", ctr.Path, `{}`, "")
	backend := netip.MustParseAddrPort("127.0.0.9:9921")
	idle := netip.MustParseAddrPort("127.0.0.9:9922") // a backend nobody dials
	testenv.HoldPairs(b, scaleSockets-2*scaleClients)

	var destroy, scan []time.Duration
	for round := 0; round < scaleRounds; round++ {
		// A fresh backend each round: the old one holds the ends of the
		// destroyed connections (closed, but still descriptors).
		server := testenv.StartHolder(b, "backend", cgroup.Cgroup{}, nil, "serve", "-addr", backend.String())
		var clients []*testenv.Holder
		for i := 0; i < scaleClients/scalePerProcess; i++ {
			clients = append(clients, testenv.StartHolder(b, fmt.Sprintf("clients-%d", i), ctr, nil,
				"dial", "-addr", backend.String(), "-n", fmt.Sprint(scalePerProcess)))
		}

		start := time.Now()
		none, err := terminate.Backend(dir, idle, "tcp", false)
		scan = append(scan, time.Since(start))
		if err != nil {
			return [2]time.Duration{}, err
		}
		start = time.Now()
		report, err := terminate.Backend(dir, backend, "tcp", false)
		destroy = append(destroy, time.Since(start))
		if err != nil {
			return [2]time.Duration{}, err
		}
		// Every socket is walked when nothing closes meanwhile. While
		// the clients are destroyed, their resets close the backend's
		// ends, and those the iterator had not reached yet are gone
		// before it gets there.
		if none.Destroyed != 0 || none.Namespaces[0].Scanned < scaleSockets {
			return [2]time.Duration{}, fmt.Errorf("round %d: idle backend: destroyed %d after scanning %d sockets, want 0 after at least %d",
				round, none.Destroyed, none.Namespaces[0].Scanned, scaleSockets)
		}
		if report.Destroyed != scaleClients || report.Namespaces[0].Scanned < scaleSockets-scaleClients {
			return [2]time.Duration{}, fmt.Errorf("round %d: destroyed %d (want %d) after scanning %d sockets (want at least %d)",
				round, report.Destroyed, scaleClients, report.Namespaces[0].Scanned, scaleSockets-scaleClients)
		}
		for _, h := range clients {
			if c := h.Check(b); c.Aborted != c.Held {
				return [2]time.Duration{}, fmt.Errorf("round %d: %s: %+v, want every client aborted", round, h.Name, c)
			}
			h.Kill()
		}
		server.Kill()
	}
	return [2]time.Duration{median(destroy), median(scan)}, nil
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}
