package bench

import (
	"fmt"
	"strings"
	"testing"

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
// each of the two alone: "caps", "egress"). It reports each side's mean
// and its ratio to the plain connect, of median 100-connect blocks
// (compareSides; issue 13's goal: guarded-ratio at most 1.15).
func BenchmarkConnectGuarded(b *testing.B) {
	op := connectLoopback(b)
	dir := testenv.StateDir(b)
	plain := testenv.Cgroup(b, "bench-plain")
	sides := []side{
		{"pinned", testenv.Cgroup(b, "bench-pinned")},
		{"guarded", testenv.Cgroup(b, "bench-guarded")},
		{"caps", testenv.Cgroup(b, "bench-caps")},
		{"egress", testenv.Cgroup(b, "bench-egress")},
	}
	testenv.Attach(b, dir, "caps", sides[2].cg.Path, `{"addresses": ["127.13.0.2"], "connectionLimits": {"perDestination": 1000000, "total": 1000000}}`, "")
	eg := strings.Replace(guardedPolicy(), `"connectionLimits": {"perDestination": 1000000, "total": 1000000},`, "", 1)
	testenv.Attach(b, dir, "egress", sides[3].cg.Path, eg, "")
	testenv.Attach(b, dir, "pinned", sides[0].cg.Path, `{"addresses": ["127.13.0.2"]}`, "")
	testenv.Attach(b, dir, "guarded", sides[1].cg.Path, guardedPolicy(), "")
	compareSides(b, "connect", plain, sides, op)
}
