package bench

import (
	"fmt"
	"io"
	"os/exec"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkScale measures what a host with many containers pays per
// container. With 1, 1,000 and 10,000 attachments already in place it
// times attaching and detaching one more cgroup (2 × scaleSamples times,
// p50 and p99; the ratio to the figure at 1 is the point: it should stay
// near 1), half of the detaches with the termination scan of the removal
// paths (its cost is that of the host namespace's sockets). With 10,000 attached it also measures `portcullisctl status` (the
// process, listing every attachment), the map memory of the state, and
// bind() and connect() in one attached cgroup beside an unattached one.
//
// Building 10,000 attachments takes about 20 s and removing them (the
// state's cleanup) about 25 s.
func BenchmarkScale(b *testing.B) {
	dir := testenv.StateDir(b)
	ctl := testenv.Binary(b, "./cmd/portcullisctl")
	parent := testenv.Cgroup(b, "bench-scale")
	probe := testenv.ChildCgroup(b, parent, "probe")
	plain := testenv.ChildCgroup(b, parent, "plain")
	pol, err := policy.Parse([]byte(`{"addresses": ["127.0.0.2"], "allowedPorts": ["1024-65535"],
		"portMappings": [{"containerPort": 80, "hostPort": 11280}]}`))
	if err != nil {
		b.Fatal(err)
	}
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { s.Close() }()
	empty := mapMemory(b, s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

	have := 0
	var attachAt1, detachAt1, termAt1 time.Duration
	for _, n := range []int{1, 1_000, 10_000} {
		testenv.AttachMany(b, s, parent, fmt.Sprintf("n%d", n), n-have, pol)
		have = n
		b.Run(fmt.Sprintf("attach+detach/existing=%d", n), func(b *testing.B) {
			var att, det, term []time.Duration
			for i := 0; i < 2*scaleSamples; i++ {
				t0 := time.Now()
				if _, err := s.Attach(state.AttachRequest{ID: "probe", Cgroup: probe.Path, Policy: pol}); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				// Every other detach is the one of the removal paths
				// (CNI DEL, poststop, portcullisctl detach): it also
				// scans for the container's clients.
				if i%2 == 0 {
					err = s.Detach("probe")
				} else {
					_, err = terminate.Detach(s, "probe", io.Discard)
				}
				if err != nil {
					b.Fatal(err)
				}
				att = append(att, t1.Sub(t0))
				if i%2 == 0 {
					det = append(det, time.Since(t1))
				} else {
					term = append(term, time.Since(t1))
				}
			}
			if n == 1 {
				attachAt1, detachAt1, termAt1 = percentile(att, 50), percentile(det, 50), percentile(term, 50)
			}
			b.ReportMetric(ms(percentile(term, 50)), "ms/p50-detach+terminate")
			b.ReportMetric(float64(percentile(term, 50))/float64(termAt1), "ratio-p50-detach+terminate-vs-1")
			b.ReportMetric(ms(percentile(att, 50)), "ms/p50-attach")
			b.ReportMetric(ms(percentile(att, 99)), "ms/p99-attach")
			b.ReportMetric(ms(percentile(det, 50)), "ms/p50-detach")
			b.ReportMetric(ms(percentile(det, 99)), "ms/p99-detach")
			b.ReportMetric(float64(percentile(att, 50))/float64(attachAt1), "ratio-p50-attach-vs-1")
			b.ReportMetric(float64(percentile(det, 50))/float64(detachAt1), "ratio-p50-detach-vs-1")
		})
	}

	// The hot path: the probe cgroup stays attached among the 10,000.
	if _, err := s.Attach(state.AttachRequest{ID: "probe", Cgroup: probe.Path, Policy: pol}); err != nil {
		b.Fatal(err)
	}
	memory := mapMemory(b, s)
	s.Close() // the status process takes the lock

	b.Run("status/existing=10000", func(b *testing.B) {
		var runs []time.Duration
		for i := 0; i < 5; i++ {
			cmd := exec.Command(ctl, "status", "-o", "json", "--state-dir", dir)
			start := time.Now()
			out, err := cmd.Output()
			runs = append(runs, time.Since(start))
			if err != nil || len(out) < have*100 {
				b.Fatalf("portcullisctl status: %v (%d bytes of output)", err, len(out))
			}
		}
		b.ReportMetric(ms(percentile(runs, 50)), "ms/p50-status")
		b.ReportMetric(float64(memory)/(1<<20), "MiB-maps")
		b.ReportMetric(float64(empty)/(1<<20), "MiB-maps-empty")
	})
	b.Run("bind/existing=10000", func(b *testing.B) {
		compareIn(b, "bind", probe, plain, bindAny)
	})
	connect := connectLoopback(b)
	b.Run("connect/existing=10000", func(b *testing.B) {
		compareIn(b, "connect", probe, plain, connect)
	})
}

// scaleSamples is how many attach+detach pairs each step times.
const scaleSamples = 200

// mapMemory is the memlock of every pinned map of the state, each logged.
func mapMemory(b *testing.B, s *state.State) uint64 {
	usage, err := s.MapMemory()
	if err != nil {
		b.Fatal(err)
	}
	var sum uint64
	for _, m := range usage {
		b.Logf("map %-16s %-8s max %8d  %8.2f MiB", m.Name, m.Type, m.MaxEntries, float64(m.Memlock)/(1<<20))
		sum += m.Memlock
	}
	return sum
}
