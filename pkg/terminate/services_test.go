package terminate_test

import (
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// addService declares a service whose frontend is a virtual address.
func (w *world) addService(t *testing.T, frontend string, backends ...string) {
	t.Helper()
	d := services.Declaration{Name: "svc"}
	for _, proto := range []string{"tcp", "udp"} {
		e, err := services.ParseEndpoint(frontend + "/" + proto)
		if err != nil {
			t.Fatal(err)
		}
		d.Frontends = append(d.Frontends, e)
		for _, b := range backends {
			e, err := services.ParseEndpoint(b + "/" + proto)
			if err != nil {
				t.Fatal(err)
			}
			d.Backends = append(d.Backends, e)
		}
	}
	s, err := state.OpenOrLoad(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.ApplyServices([]services.Declaration{d}); err != nil {
		t.Fatal(err)
	}
}

// clientsOf dials the frontend from a container until it holds one
// connection per protocol to each backend name (the service picks).
func (w *world) clientsOf(t *testing.T, label string, cg cgroup.Cgroup, ns *testenv.NetNS, frontend string) map[string][]*client {
	t.Helper()
	byBackend := map[string][]*client{}
	for _, proto := range []string{"tcp", "udp"} {
		have := map[string]bool{}
		for try := 0; try < 40 && len(have) < 2; try++ {
			p := testenv.Start(t, cg, ns.Command(w.probe, "connect", "-proto", proto, "-addr", frontend, "-hold"))
			r := testenv.ParseProbe(t, p.Line(t, 5e9))
			if !r.OK {
				t.Fatalf("%s: connect %s/%s: %+v", label, frontend, proto, r)
			}
			if have[r.Reply] {
				p.Kill()
				continue
			}
			have[r.Reply] = true
			byBackend[r.Reply] = append(byBackend[r.Reply], &client{name: label + "->" + r.Reply, proc: p, proto: proto})
		}
		if len(have) < 2 {
			t.Fatalf("%s: %s/%s reached only %v", label, frontend, proto, have)
		}
	}
	return byBackend
}

// Clients in two containers (host network namespace and their own) are
// connected through a service to providers A and B. Removing A's container
// (the detach of CNI DEL and OCI poststop) destroys exactly their sockets
// to A; a host process connected to A directly is not touched.
func TestRemovedProviderContainer(t *testing.T) {
	w := newWorld(t)
	t.Setenv("PORTCULLIS_SERVICES_DIR", t.TempDir())
	frontend := fmt.Sprintf("10.96.%d.10:%d", w.port%200, w.port)
	testenv.Blackhole(t, fmt.Sprintf("10.96.%d.10", w.port%200)) // host-network clients dial it
	w.addService(t, frontend)
	provides := func(addr string) string {
		return fmt.Sprintf(`{"addresses": [%q], "provides": [{"service": "svc", "port": %d, "protocol": "tcp"},
			{"service": "svc", "port": %d, "protocol": "udp"}]}`, addr, w.port, w.port)
	}
	ctrA, ctrB := testenv.Cgroup(t, "term-prov-a"), testenv.Cgroup(t, "term-prov-b")
	w.attach(t, "provider-a", ctrA, provides(w.a.String()), "")
	w.attach(t, "provider-b", ctrB, provides(w.b.String()), "")
	w.listen(t, ctrA, "A", w.a)
	w.listen(t, ctrB, "B", w.b)

	hostCtr, nsCtr := testenv.Cgroup(t, "term-c1"), testenv.Cgroup(t, "term-c2")
	w.attach(t, "client-host", hostCtr, `{}`, "")
	w.attach(t, "client-ns", nsCtr, `{}`, w.ns.Path)
	fromHost := w.clientsOf(t, "host-ctr", hostCtr, nil, frontend)
	fromNS := w.clientsOf(t, "ns-ctr", nsCtr, w.ns, frontend)
	direct := w.connect(t, "host process->A", cgroup.Cgroup{}, nil, "tcp", w.a, "A")

	s, err := state.Open(w.dir, true)
	if err != nil {
		t.Fatal(err)
	}
	report, err := terminate.Detach(s, "provider-a", io.Discard)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if report == nil || report.Destroyed != 4 {
		t.Errorf("want 4 sockets destroyed (tcp and udp, two containers), got %+v", report)
	}
	for _, c := range append(fromHost["A"], fromNS["A"]...) {
		c.aborted(t)
	}
	for _, c := range append(append(fromHost["B"], fromNS["B"]...), direct) {
		c.alive(t)
	}
}

// The operator takes static backends out of a service: service backend
// del ends the clients of that backend only, service del those of the rest.
func TestServiceBackendDelAndServiceDel(t *testing.T) {
	w := newWorld(t)
	t.Setenv("PORTCULLIS_SERVICES_DIR", t.TempDir())
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	frontend := fmt.Sprintf("10.96.%d.11:%d", w.port%200, w.port)
	w.addService(t, frontend, w.addrPort(w.a), w.addrPort(w.b))
	w.listen(t, cgroup.Cgroup{}, "A", w.a)
	w.listen(t, cgroup.Cgroup{}, "B", w.b)
	ctr := testenv.Cgroup(t, "term-static")
	w.attach(t, "client", ctr, `{}`, w.ns.Path)
	clients := w.clientsOf(t, "client", ctr, w.ns, frontend)

	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctl, append([]string{"--state-dir", w.dir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portcullisctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("service", "backend", "del", "svc", w.addrPort(w.a)+"/tcp")
	if !strings.Contains(out, "terminated 1 sockets") {
		t.Errorf("service backend del printed %q, want 1 socket terminated", out)
	}
	for _, c := range clients["A"] {
		if c.proto == "tcp" {
			c.aborted(t)
		} else {
			c.alive(t) // A is still the UDP backend
		}
	}
	for _, c := range clients["B"] {
		c.alive(t)
	}

	out = run("service", "del", "svc")
	if !strings.Contains(out, "terminated 3 sockets") {
		t.Errorf("service del printed %q, want 3 sockets terminated", out)
	}
	for _, c := range append(clients["B"], clients["A"]...) {
		if c.proto == "udp" || strings.HasSuffix(c.name, "B") {
			c.aborted(t)
		}
	}
}
