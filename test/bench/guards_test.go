package bench

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// guardedPolicy has a thousand egress rules (none of which matches the
// benchmark's destination, so every rule that could match is looked at)
// and connection caps high enough never to refuse.
func guardedPolicy() string {
	var rules []string
	for i := 0; i < 1000; i++ {
		rules = append(rules, fmt.Sprintf(`{"action": "deny", "cidr": "10.13.%d.%d/32", "ports": ["5432", "13000-13999"], "protocol": "tcp"}`, i/250, i%250))
	}
	return `{"addresses": ["127.13.0.2"], "connectionLimits": {"perDestination": 1000000, "total": 1000000},
		"groups": ["bench"], "egress": [{"action": "deny", "group": "nonprod"}, ` + strings.Join(rules, ", ") + `,
		{"action": "allow", "cidr": "127.0.0.0/8"}], "egressDefault": "deny"}`
}

// BenchmarkConnectGuarded: TCP connect to a loopback listener and close,
// in a plain cgroup, in one with a pinned-address policy, and in one with
// that policy plus 1,000 egress rules and connection caps ("guarded"; and
// each of the two alone: "caps", "egress"). It reports the p50 of each and
// the ratios to the plain connect (issue 13's goal: ratio-guarded at most
// 1.15). The sides alternate in blocks of 100 connects, so load on the
// machine hits them alike.
func BenchmarkConnectGuarded(b *testing.B) {
	op := connectLoopback(b)
	dir := testenv.StateDir(b)
	sides := []struct {
		name string
		cg   cgroup.Cgroup
		took []time.Duration
	}{
		{name: "plain", cg: testenv.Cgroup(b, "bench-plain")},
		{name: "pinned", cg: testenv.Cgroup(b, "bench-pinned")},
		{name: "guarded", cg: testenv.Cgroup(b, "bench-guarded")},
		{name: "caps", cg: testenv.Cgroup(b, "bench-caps")},
		{name: "egress", cg: testenv.Cgroup(b, "bench-egress")},
	}
	testenv.Attach(b, dir, "caps", sides[3].cg.Path, `{"addresses": ["127.13.0.2"], "connectionLimits": {"perDestination": 1000000, "total": 1000000}}`, "")
	eg := strings.Replace(guardedPolicy(), `"connectionLimits": {"perDestination": 1000000, "total": 1000000},`, "", 1)
	testenv.Attach(b, dir, "egress", sides[4].cg.Path, eg, "")
	testenv.Attach(b, dir, "pinned", sides[1].cg.Path, `{"addresses": ["127.13.0.2"]}`, "")
	testenv.Attach(b, dir, "guarded", sides[2].cg.Path, guardedPolicy(), "")

	connect := func() time.Duration {
		start := time.Now()
		op(b)
		return time.Since(start)
	}
	const block = 100
	b.ResetTimer()
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		for i := range sides {
			back := enterCgroup(b, sides[i].cg)
			for j := 0; j < n; j++ {
				sides[i].took = append(sides[i].took, connect())
			}
			back()
		}
	}
	b.StopTimer()
	p50 := map[string]float64{}
	for _, s := range sides {
		sort.Slice(s.took, func(i, j int) bool { return s.took[i] < s.took[j] })
		p50[s.name] = float64(s.took[len(s.took)/2].Nanoseconds())
		b.ReportMetric(p50[s.name], "p50-ns/connect-"+s.name)
	}
	for _, s := range sides[1:] {
		b.ReportMetric(p50[s.name]/p50["plain"], "ratio-"+s.name)
	}
}
