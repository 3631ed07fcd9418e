package multihost_test

// Two simulated hosts on one kernel: network namespaces A and B joined by
// a veth, each with its own portcullis state and its own `portcullisctl
// sync` (in the host namespace: it touches only bpffs maps and etcd), and
// a real three-member etcd cluster on loopback.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

const (
	port     = 17432
	frontend = "127.17.1.1:17432"
	addrA    = "10.17.0.1"
	addrB    = "10.17.0.2"
)

type host struct {
	name  string
	dir   string
	ns    *testenv.NetNS
	sync  *testenv.Proc
	ctl   string
	etcd  string
	probe string
}

// twoHosts makes namespaces A and B, the veth between them, and a state
// for each with service db declared (frontend on loopback).
func twoHosts(t *testing.T) (*host, *host) {
	t.Helper()
	t.Setenv("PORTCULLIS_SERVICES_DIR", t.TempDir())
	testenv.Blackhole(t, "10.17.0.0/24")
	ctl, probe := testenv.Binary(t, "./cmd/portcullisctl"), testenv.Binary(t, "./test/sockprobe")
	a := &host{name: "a", dir: testenv.StateDir(t), ns: testenv.NewNetNS(t), ctl: ctl, probe: probe}
	b := &host{name: "b", dir: testenv.StateDir(t), ns: testenv.NewNetNS(t), ctl: ctl, probe: probe}
	va, vb := "p17a"+testenv.Suffix(), "p17b"+testenv.Suffix()
	testenv.Run(t, "ip", "link", "add", va, "netns", a.ns.Name, "type", "veth", "peer", "name", vb, "netns", b.ns.Name)
	a.ns.IP(t, "addr", "add", addrA+"/24", "dev", va)
	a.ns.IP(t, "link", "set", va, "up")
	b.ns.IP(t, "addr", "add", addrB+"/24", "dev", vb)
	b.ns.IP(t, "link", "set", vb, "up")
	a.declare(t)
	b.declare(t)
	return a, b
}

// declare applies the declaration of db.
func (h *host) declare(t *testing.T) {
	t.Helper()
	fe, _ := services.ParseEndpoint(frontend)
	h.apply(t, services.Declaration{Name: "db", Frontends: []services.Endpoint{fe}})
}

// apply applies declarations on the host, as services.d would.
func (h *host) apply(t *testing.T, decls ...services.Declaration) {
	t.Helper()
	s, err := state.OpenOrLoad(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.ApplyServices(decls); err != nil {
		t.Fatal(err)
	}
}

func decl(name string, frontends ...string) services.Declaration {
	d := services.Declaration{Name: name}
	for _, f := range frontends {
		e, err := services.ParseEndpoint(f)
		if err != nil {
			panic(err)
		}
		d.Frontends = append(d.Frontends, e)
	}
	return d
}

// show reads a service from the host's maps (nil: there is none).
func (h *host) show(t *testing.T, name string) *services.Service {
	t.Helper()
	m, err := services.Open(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	svc, err := m.Get(name)
	if errors.Is(err, services.ErrNotFound) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return svc
}

// waitService waits until ok accepts the host's service (nil: none).
func (h *host) waitService(t *testing.T, name, what string, within time.Duration, ok func(*services.Service) bool) *services.Service {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		svc := h.show(t, name)
		if ok(svc) {
			return svc
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: service %s: %s: not within %s; have %+v", h.name, name, what, within, svc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func frontendsAre(svc *services.Service, want ...string) bool {
	var have []string
	for _, e := range svc.Frontends {
		have = append(have, e.String())
	}
	return strings.Join(have, ",") == strings.Join(want, ",")
}

// container attaches a new cgroup to the host's state, in its namespace.
func (h *host) container(t *testing.T, id, doc string) cgroup.Cgroup {
	t.Helper()
	cg := testenv.Cgroup(t, "mh-"+h.name+"-"+id)
	testenv.Attach(t, h.dir, id, cg.Path, doc, h.ns.Path)
	return cg
}

func provides(addr string) string {
	return fmt.Sprintf(`{"addresses": [%q], "provides": [{"service": "db", "port": %d, "protocol": "tcp"}]}`, addr, port)
}

func (h *host) startSync(t *testing.T, ttl string) {
	t.Helper()
	h.sync = testenv.Start(t, cgroup.Cgroup{}, exec.Command(h.ctl, "--state-dir", h.dir, "sync", "--etcd", h.etcd, "--node", h.name, "--ttl", ttl))
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("sync %s log:\n%s", h.name, h.sync.Stderr())
		}
	})
}

// listen starts a provider's server in its container.
func (h *host) listen(t *testing.T, cg cgroup.Cgroup, addr, name string) *testenv.Proc {
	t.Helper()
	return h.listenOn(t, cg, "tcp", fmt.Sprintf("%s:%d", addr, port), name)
}

func (h *host) listenOn(t *testing.T, cg cgroup.Cgroup, proto, addr, name string) *testenv.Proc {
	t.Helper()
	p := testenv.Start(t, cg, h.ns.Command(h.probe, "listen", "-proto", proto, "-addr", addr, "-name", name))
	if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
		t.Fatalf("provider %s: %+v", name, r)
	}
	return p
}

// dial connects from a container to the frontend once; hold keeps the
// connection open.
func (h *host) dial(t *testing.T, cg cgroup.Cgroup, hold bool) (testenv.ProbeResult, *testenv.Proc) {
	t.Helper()
	return h.dialTo(t, cg, "tcp", frontend, hold)
}

func (h *host) dialTo(t *testing.T, cg cgroup.Cgroup, proto, addr string, hold bool) (testenv.ProbeResult, *testenv.Proc) {
	t.Helper()
	argv := []string{h.probe, "connect", "-proto", proto, "-addr", addr}
	if hold {
		argv = append(argv, "-hold")
	}
	p := testenv.Start(t, cg, h.ns.Command(argv...))
	return testenv.ParseProbe(t, p.Line(t, 5*time.Second)), p
}

// eventuallyTo dials addr until ok accepts the result.
func (h *host) eventuallyTo(t *testing.T, cg cgroup.Cgroup, proto, addr, what string, within time.Duration, ok func(testenv.ProbeResult) bool) testenv.ProbeResult {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, p := h.dialTo(t, cg, proto, addr, false)
		p.Kill()
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: %s: not within %s; last dial %+v", h.name, what, within, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually dials the frontend until ok accepts the result.
func (h *host) eventually(t *testing.T, cg cgroup.Cgroup, what string, within time.Duration, ok func(testenv.ProbeResult) bool) testenv.ProbeResult {
	t.Helper()
	return h.eventuallyTo(t, cg, "tcp", frontend, what, within, ok)
}

// waitRemotes waits until the host's maps hold n remote backends of db.
func (h *host) waitRemotes(t *testing.T, n int) {
	t.Helper()
	h.remotesWithin(t, n, 5*time.Second)
}

func (h *host) remotesWithin(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out := testenv.Run(t, h.ctl, "--state-dir", h.dir, "service", "show", "db", "-o", "json")
		var svc services.Service
		if err := json.Unmarshal([]byte(out), &svc); err != nil {
			t.Fatal(err)
		}
		if len(services.RemotesOf(&svc)) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: want %d remote backends of db within %s, have %s", h.name, n, within, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// allAnsweredBy checks that ten connects all reach the named provider.
func (h *host) allAnsweredBy(t *testing.T, cg cgroup.Cgroup, name string) {
	t.Helper()
	for i := 0; i < 10; i++ {
		r, p := h.dial(t, cg, false)
		p.Kill()
		if !answeredBy(name)(r) {
			t.Errorf("host %s: dial %d: want provider %s, got %+v", h.name, i, name, r)
		}
	}
}

// holdConnectionTo dials from h until provider name answers (up to 40
// tries) and returns that held client, or nil.
func (h *host) holdConnectionTo(t *testing.T, cg cgroup.Cgroup, name string) *testenv.Proc {
	t.Helper()
	for try := 0; try < 40; try++ {
		r, p := h.dial(t, cg, true)
		if answeredBy(name)(r) {
			return p
		}
		p.Kill()
	}
	return nil
}

func answeredBy(name string) func(testenv.ProbeResult) bool {
	return func(r testenv.ProbeResult) bool { return r.OK && r.Reply == name }
}

func refused(r testenv.ProbeResult) bool { return !r.OK && r.Errno == "ECONNREFUSED" }

func TestBackendsAcrossHosts(t *testing.T) {
	members, _ := testenv.EtcdAddrs(t, 3)
	cluster := testenv.StartEtcd(t, members...)
	a, b := twoHosts(t)
	a.etcd, b.etcd = cluster.Endpoints(), cluster.Endpoints()
	provA := a.container(t, "provider", provides(addrA))
	client := b.container(t, "client", `{}`)
	provB := b.container(t, "provider", provides(addrB))
	a.startSync(t, "3s")
	b.startSync(t, "3s")

	// Nothing listens anywhere yet: the frontend refuses.
	b.eventually(t, client, "no backend yet", 5*time.Second, refused)

	// A's provider listens: B's client reaches it through the frontend,
	// and getpeername shows the frontend, not A's address.
	listenA := a.listen(t, provA, addrA, "A")
	r := b.eventually(t, client, "reach A's provider", 5*time.Second, answeredBy("A"))
	if r.Peer != frontend {
		t.Errorf("getpeername on B: want the frontend %s, got %s", frontend, r.Peer)
	}
	out := testenv.Run(t, b.ctl, "--state-dir", b.dir, "service", "show", "db", "-o", "json")
	var svc services.Service
	if err := json.Unmarshal([]byte(out), &svc); err != nil {
		t.Fatal(err)
	}
	if len(svc.Backends) != 2 || svc.Backends[0].Kind != "remote" || svc.Backends[0].Node != "a" ||
		svc.Backends[0].Endpoint.String() != fmt.Sprintf("%s:%d/tcp", addrA, port) {
		t.Errorf("service show on B: want remote backend %s:%d on node a (then B's idle provider), got %s", addrA, port, out)
	}
	table := testenv.Run(t, b.ctl, "--state-dir", b.dir, "service", "show", "db")
	if !strings.Contains(table, "remote    10.17.0.1:17432/tcp") || !strings.Contains(table, "NODE") {
		t.Errorf("service show on B does not name the node:\n%s", table)
	}

	// Declarations own the static backends only: applying db again (as
	// every attach does) keeps A's remote backend.
	a.declare(t)
	b.declare(t)
	if r, p := b.dial(t, client, false); !answeredBy("A")(r) {
		t.Errorf("after re-applying the declaration B no longer reaches A: %+v", r)
	} else {
		p.Kill()
	}

	// An etcd member dies now and comes back later.
	// The leader, so that the cluster elects another meanwhile.
	dead := cluster.Leader()
	cluster.Kill(dead)
	t.Logf("killed etcd member %d, the leader", dead)

	// B's own provider listens too: B's clients get either.
	b.listen(t, provB, addrB, "B")
	b.eventually(t, client, "reach B's own provider", 5*time.Second, answeredBy("B"))

	// A's provider stops listening: B stops picking it (its remote
	// backend is gone from B's maps, every connect goes to B).
	listenA.Kill()
	b.waitRemotes(t, 0)
	b.allAnsweredBy(t, client, "B")

	cluster.Start(dead)
	listenA = a.listen(t, provA, addrA, "A")
	b.waitRemotes(t, 1)
	held := b.holdConnectionTo(t, client, "A")
	if held == nil {
		t.Fatal("B never picked A's provider again")
	}

	// A's sync is SIGKILLed: once its lease expires B's clients of A are
	// aborted and every new connect goes to B's provider.
	a.sync.Kill()
	killed := time.Now()
	hr := testenv.ParseProbe(t, held.Line(t, 10*time.Second))
	t.Logf("held client of A ended after %s: %+v", time.Since(killed).Round(time.Millisecond), hr)
	if hr.Errno != "ECONNABORTED" {
		t.Errorf("B's client of A after A's sync died: want ECONNABORTED, got %+v", hr)
	}
	b.allAnsweredBy(t, client, "B")

	// Nothing was lost: the restarted member has B's backend too.
	cluster.WaitHealthy(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cluster.Client(dead).Get(ctx, "/portcullis/backends/", clientWithPrefix()...)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	want := fmt.Sprintf("/portcullis/backends/db/b/%s:%d/tcp", addrB, port)
	if len(keys) != 1 || keys[0] != want {
		t.Errorf("restarted member %d holds %v, want exactly [%s]", dead, keys, want)
	}
	_ = listenA
}

func clientWithPrefix() []clientv3.OpOption { return []clientv3.OpOption{clientv3.WithPrefix()} }
