package stats_test

import (
	"os/exec"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Connects through services, a refused connect and a rewritten UDP source
// each increment exactly their own reason.
func TestConnectDecisionsCountExactlyTheirReason(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "stats-connect")
	testenv.Attach(t, dir, "conn", cg.Path, `{"addresses": ["127.0.0.1"]}`, "")
	probe := testenv.Binary(t, "./test/sockprobe")
	host := testenv.Cgroup(t, "stats-connect-host")

	// Backends in a cgroup without a policy.
	tcp := testenv.Start(t, host, exec.Command(probe, "listen", "-proto", "tcp", "-addr", "127.0.0.1:14062", "-name", "backend"))
	udp := testenv.Start(t, host, exec.Command(probe, "listen", "-proto", "udp", "-addr", "127.0.0.1:14063", "-name", "backend"))
	for _, p := range []*testenv.Proc{tcp, udp} {
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("backend: %+v", r)
		}
	}
	ep := func(s string) services.Endpoint {
		e, err := services.ParseEndpoint(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	err = s.ApplyServices([]services.Declaration{
		{Name: "live14", Frontends: []services.Endpoint{ep("127.14.0.10:14060")}, Backends: []services.Endpoint{ep("127.0.0.1:14062")}},
		{Name: "dead14", Frontends: []services.Endpoint{ep("127.14.0.11:14061")}},
	})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}

	want := map[string]uint64{}
	for _, r := range stats.Reasons() {
		want[r.String()] = 0
	}
	check := func(step string) {
		t.Helper()
		got := read(t, dir)["conn"].Decisions
		for reason, n := range want {
			if got[reason] != n {
				t.Errorf("after %s: %s = %d, want %d", step, reason, got[reason], n)
			}
		}
	}
	run := func(args ...string) testenv.ProbeResult {
		t.Helper()
		p := testenv.Start(t, cg, exec.Command(probe, args...))
		r := testenv.ParseProbe(t, p.Line(t, 5*time.Second))
		p.Kill()
		return r
	}

	if r := run("connect", "-proto", "tcp", "-addr", "127.14.0.10:14060"); r.Reply != "backend" {
		t.Fatalf("connect through the frontend: %+v", r)
	}
	want[stats.ConnectTranslated.String()]++
	check("a connect through a frontend")

	if r := run("connect", "-proto", "tcp", "-addr", "127.14.0.11:14061"); r.Errno != "ECONNREFUSED" {
		t.Fatalf("connect to a frontend without backends: %+v", r)
	}
	want[stats.ConnectRefusedNoBackend.String()]++
	check("a connect to a frontend without backends")

	if r := run("connect", "-proto", "udp", "-addr", "127.0.0.1:14063", "-sendto"); !r.OK || r.Reply != "backend" {
		t.Fatalf("sendto: %+v", r)
	}
	want[stats.UDPSourceRewritten.String()]++
	check("an unconnected UDP datagram")

}

// Issue 13's refusals are counted as their own reasons: an egress rule
// (EPERM) and a connection cap (EAGAIN).
func TestEgressAndCapRefusalsCountExactlyTheirReason(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "stats-refuse")
	testenv.Attach(t, dir, "refuse", cg.Path, `{"connectionLimits": {"total": 1},
		"egress": [{"action": "deny", "cidr": "127.14.0.0/16"}]}`, "")
	probe := testenv.Binary(t, "./test/sockprobe")
	srv := testenv.Start(t, testenv.Cgroup(t, "stats-refuse-host"), exec.Command(probe, "listen", "-proto", "tcp", "-addr", "127.0.0.1:14071", "-name", "host"))
	if r := testenv.ParseProbe(t, srv.Line(t, 5*time.Second)); !r.OK {
		t.Fatalf("listen: %+v", r)
	}
	want := map[string]uint64{}
	for _, r := range stats.Reasons() {
		want[r.String()] = 0
	}
	check := func(step string) {
		t.Helper()
		got := read(t, dir)["refuse"].Decisions
		for reason, n := range want {
			if got[reason] != n {
				t.Errorf("after %s: %s = %d, want %d", step, reason, got[reason], n)
			}
		}
	}
	first := func(p *testenv.Proc) testenv.ProbeResult {
		t.Helper()
		return testenv.ParseProbe(t, p.Line(t, 5*time.Second))
	}

	if r := first(testenv.Start(t, cg, exec.Command(probe, "connect", "-proto", "tcp", "-addr", "127.14.1.1:14070"))); r.Errno != "EPERM" {
		t.Fatalf("connect denied by egress: %+v", r)
	}
	want[stats.ConnectRefusedEgress.String()]++
	check("a connect an egress rule denies")

	held := testenv.Start(t, cg, exec.Command(probe, "connect", "-proto", "tcp", "-addr", "127.0.0.1:14071", "-hold"))
	if r := first(held); r.Reply != "host" {
		t.Fatalf("first connect: %+v", r)
	}
	if r := first(testenv.Start(t, cg, exec.Command(probe, "connect", "-proto", "tcp", "-addr", "127.0.0.1:14071"))); r.Errno != "EAGAIN" {
		t.Fatalf("connect over the cap: %+v", r)
	}
	want[stats.ConnectRefusedCap.String()]++
	check("a connect over the cap")
}
