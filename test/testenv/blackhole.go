package testenv

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// Blackhole keeps packets to the given addresses or prefixes on this
// machine for the test's duration: each gets a blackhole route in the host
// network namespace, so a connect or send that nothing translated fails at
// once (EINVAL) instead of leaving through the default route.
//
// Every test that dials a service VIP outside loopback from the host
// namespace uses it (a test made namespace has no default route, so there
// a VIP is unreachable already), and so does a test whose peers sit
// behind a veth it will take down or delete: without the link's route, a
// late segment (a reset, a FIN retransmitted) would follow the default
// route off the host too.
//
// Several tests, here or in other worktrees on the same kernel, may guard
// the same prefix at once. Each guard is a route of its own, told apart by
// a random metric, and cleanup removes exactly that route. A more specific
// route, or the same prefix's kernel link route (metric 0), still wins
// while it exists, so guarding a veth's subnet does not cut the veth off.
func Blackhole(t testing.TB, prefixes ...string) {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "ip", "iproute2")
	for _, s := range prefixes {
		prefix, err := parsePrefix(s)
		if err != nil {
			t.Fatalf("blackhole %q: %v", s, err)
		}
		family := "-4"
		if prefix.Addr().Is6() {
			family = "-6"
		}
		var metric string
		for try := 0; ; try++ {
			metric = fmt.Sprint(1_000_000 + rand.IntN(1_000_000_000))
			out, err := exec.Command("ip", family, "route", "add", "blackhole", prefix.String(), "metric", metric).CombinedOutput()
			if err == nil {
				break
			}
			if !strings.Contains(string(out), "File exists") || try == 10 {
				t.Fatalf("ip route add blackhole %s metric %s: %v: %s", prefix, metric, err, out)
			}
		}
		t.Cleanup(func() {
			if out, err := exec.Command("ip", family, "route", "del", "blackhole", prefix.String(), "metric", metric).CombinedOutput(); err != nil {
				t.Errorf("ip route del blackhole %s metric %s: %v: %s", prefix, metric, err, out)
			}
		})
	}
}

// parsePrefix takes a prefix or a bare address (a /32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	prefix, err := netip.ParsePrefix(s)
	if addr, aerr := netip.ParseAddr(s); aerr == nil {
		addr = addr.Unmap()
		prefix, err = netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("want an address or a prefix: %v", err)
	}
	if addr := prefix.Addr(); addr.IsLoopback() || addr.IsUnspecified() {
		return netip.Prefix{}, fmt.Errorf("%s is loopback or unspecified: it needs no guard", prefix)
	}
	return prefix.Masked(), nil
}
