package testenv_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// With the guard in place, a connect or send to the VIP that nothing
// translates fails at once on this machine (EINVAL from the blackhole
// route: no SYN, no datagram goes out), while an attached container's
// connect, translated at connect(2) before any route lookup, still reaches
// the backend. The VIPs are in issue 9's 10.9/16 and fd09::/16, which this
// host would otherwise route out through its default route.
func TestBlackholeKeepsUntranslatedVIPsLocal(t *testing.T) {
	probe := testenv.Binary(t, "./test/sockprobe")
	v4 := fmt.Sprintf("10.9.96.%d", 1+rand.IntN(254))
	v6 := fmt.Sprintf("fd09::96:%x", 1+rand.IntN(0xfffe))
	const port = "9901" // issue 9: ports 9xxx

	dir := testenv.StateDir(t)
	ctr := testenv.Cgroup(t, "blackhole")
	testenv.Attach(t, dir, "blackhole", ctr.Path, `{}`, "")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	// One service per family, each with a loopback backend of its family
	// (the kernel cannot send an IPv6 datagram to a v4-mapped address).
	var decls []services.Declaration
	for _, fb := range [][3]string{{v4, "127.0.0.1", "guarded-v4"}, {v6, "::1", "guarded-v6"}} {
		d := services.Declaration{Name: fb[2]}
		for _, proto := range []policy.Protocol{policy.TCP, policy.UDP} {
			d.Frontends = append(d.Frontends, services.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr(fb[0]), 9901), Protocol: proto})
			d.Backends = append(d.Backends, services.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr(fb[1]), 9901), Protocol: proto})
		}
		decls = append(decls, d)
	}
	err = s.ApplyServices(decls)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"127.0.0.1:" + port, "[::1]:" + port} {
		for _, proto := range []string{"tcp", "udp"} {
			srv := testenv.Start(t, cgroup.Cgroup{}, exec.Command(probe, "listen", "-proto", proto, "-addr", addr, "-name", "backend"))
			if r := testenv.ParseProbe(t, srv.Line(t, 5*time.Second)); !r.OK {
				t.Fatalf("backend %s %s: %+v", proto, addr, r)
			}
		}
	}
	dial := func(cg cgroup.Cgroup, args ...string) testenv.ProbeResult {
		t.Helper()
		p := testenv.Start(t, cg, exec.Command(probe, append([]string{"connect"}, args...)...))
		return testenv.ParseProbe(t, strings.Split(p.Output(t, 10*time.Second), "\n")[0])
	}

	t.Run("stacked guards", func(t *testing.T) {
		testenv.Blackhole(t, v4, v6)
		t.Run("a second guard of the same addresses", func(t *testing.T) {
			testenv.Blackhole(t, v4+"/32", v6+"/128")
		})
		// The inner guard is gone, the outer one still holds. The route
		// lookup (which sends nothing) is checked before any dial, so a
		// broken guard fails here without a packet leaving.
		for _, vip := range []string{v4, v6} {
			if out, err := exec.Command("ip", "route", "get", vip).CombinedOutput(); err == nil || !strings.Contains(string(out), "Invalid argument") {
				t.Fatalf("ip route get %s with the guard: %v %s, want the blackhole's Invalid argument", vip, err, out)
			}
		}
		for _, vip := range []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(v4), 9901), netip.AddrPortFrom(netip.MustParseAddr(v6), 9901)} {
			for _, args := range [][]string{{"-proto", "tcp"}, {"-proto", "udp"}, {"-proto", "udp", "-sendto"}} {
				args = append(args, "-addr", vip.String())
				if r := dial(cgroup.Cgroup{}, args...); r.OK || r.Errno != "EINVAL" {
					t.Errorf("host process, no translation: connect %v: %+v, want EINVAL from the blackhole route", args, r)
				}
				if r := dial(ctr, args...); !r.OK || r.Reply != "backend" {
					t.Errorf("attached container, translated: connect %v: %+v, want the backend", args, r)
				}
			}
		}
	})
	// Every guard removed its own route at cleanup.
	for _, vip := range [][2]string{{"-4", v4 + "/32"}, {"-6", v6 + "/128"}} {
		if out := testenv.Run(t, "ip", vip[0], "route", "show", "exact", vip[1], "type", "blackhole"); strings.TrimSpace(out) != "" {
			t.Errorf("blackhole routes for %s left after the guards' cleanup:\n%s", vip, out)
		}
	}
}
