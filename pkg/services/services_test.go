package services_test

// Integration tests: the real programs in real cgroups; backends and
// clients are the static sockprobe and busybox-static, in network
// namespaces each test creates.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

type world struct {
	ns    *testenv.NetNS
	dir   string
	probe string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{ns: testenv.NewNetNS(t), dir: testenv.StateDir(t), probe: testenv.Binary(t, "./test/sockprobe")}
	t.Setenv("PORTCULLIS_SERVICES_DIR", t.TempDir())
	// IPv6 backends and clients: fd00::2-5 on lo, all of 127/8 is local.
	for i := 2; i <= 5; i++ {
		w.ns.IP(t, "addr", "add", fmt.Sprintf("fd00::%d/128", i), "dev", "lo", "nodad")
	}
	return w
}

func (w *world) state(t *testing.T) *state.State {
	t.Helper()
	s, err := state.OpenOrLoad(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// container attaches a new cgroup with doc as its policy.
func (w *world) container(t *testing.T, id, doc string) cgroup.Cgroup {
	t.Helper()
	cg := testenv.Cgroup(t, id)
	testenv.Attach(t, w.dir, id, cg.Path, doc, w.ns.Path)
	return cg
}

func (w *world) detach(t *testing.T, id string) {
	t.Helper()
	testenv.Detach(t, w.dir, id)
}

func (w *world) addService(t *testing.T, name string, frontends []string, backends ...string) {
	t.Helper()
	d := services.Declaration{Name: name}
	for _, f := range frontends {
		d.Frontends = append(d.Frontends, endpoint(t, f))
	}
	for _, b := range backends {
		d.Backends = append(d.Backends, endpoint(t, b))
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

func endpoint(t *testing.T, s string) services.Endpoint {
	t.Helper()
	e, err := services.ParseEndpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (w *world) show(t *testing.T, name string) *services.Service {
	t.Helper()
	s, err := state.Open(w.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	svc, err := m.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// listen starts a sockprobe server named name in cg and waits until it
// is bound.
func (w *world) listen(t *testing.T, cg cgroup.Cgroup, proto, addr, name string) *testenv.Proc {
	t.Helper()
	p := testenv.Start(t, cg, w.ns.Command(w.probe, "listen", "-proto", proto, "-addr", addr, "-name", name))
	if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
		t.Fatalf("%s: listen %s: %+v", name, addr, r)
	}
	return p
}

// dial runs one sockprobe client in cg and returns its result.
func (w *world) dial(t *testing.T, cg cgroup.Cgroup, args ...string) testenv.ProbeResult {
	t.Helper()
	p := testenv.Start(t, cg, w.ns.Command(append([]string{w.probe, "connect"}, args...)...))
	out := p.Output(t, 10*time.Second)
	return testenv.ParseProbe(t, strings.Split(out, "\n")[0])
}

// reach dials n times and counts who answered, checking that every
// connection shows the frontend as its peer.
func (w *world) reach(t *testing.T, cg cgroup.Cgroup, n int, proto, frontend string, extra ...string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		r := w.dial(t, cg, append([]string{"-proto", proto, "-addr", frontend}, extra...)...)
		if !r.OK {
			t.Fatalf("dial %s: %+v", frontend, r)
		}
		if r.Peer != frontend {
			t.Fatalf("dial %s: peer shows %s, want the frontend", frontend, r.Peer)
		}
		seen[r.Reply]++
	}
	return seen
}

const (
	backendA = `{"addresses": ["127.0.0.2", "fd00::2"], "provides": [{"service": "db", "port": 5432}]}`
	backendB = `{"addresses": ["127.0.0.3", "fd00::3"], "provides": [{"service": "db", "port": 5432, "protocol": "tcp"}]}`
	client   = `{"addresses": ["127.0.0.4", "fd00::4"]}`
)

func TestProvidersBalanceFollowListeners(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "db", []string{"127.0.0.1:5432", "10.96.0.10:5432", "[fd00::10]:5432"})
	a := w.container(t, "a", backendA)
	b := w.container(t, "b", backendB)
	c := w.container(t, "c", client)

	// Attached, not listening: no live backend, a clear refusal.
	if r := w.dial(t, c, "-addr", "127.0.0.1:5432"); r.OK || r.Errno != "ECONNREFUSED" {
		t.Fatalf("no live backend: %+v, want ECONNREFUSED", r)
	}

	// Only A listens: B, which has not bound, is never picked.
	srvA := w.listen(t, a, "tcp", "0.0.0.0:5432", "A")
	if got := w.reach(t, c, 10, "tcp", "127.0.0.1:5432"); got["A"] != 10 {
		t.Fatalf("with only A listening: %v", got)
	}

	// Both listen (B on a dual-stack socket, pinned to its IPv4 address):
	// every frontend reaches both.
	srvB := w.listen(t, b, "tcp", "[::ffff:0.0.0.0]:5432", "B")
	svc := w.show(t, "db")
	if len(svc.Backends) != 2 || !svc.Backends[0].Live || !svc.Backends[1].Live {
		t.Fatalf("service show: %+v", svc.Backends)
	}
	for _, fe := range []string{"127.0.0.1:5432", "10.96.0.10:5432", "[::ffff:10.96.0.10]:5432"} {
		if got := w.reach(t, c, 30, "tcp", fe); got["A"] == 0 || got["B"] == 0 {
			t.Fatalf("%s reached %v, want both A and B", fe, got)
		}
	}
	// A container that provides db can dial it too.
	if got := w.reach(t, a, 30, "tcp", "127.0.0.1:5432"); got["A"] == 0 || got["B"] == 0 {
		t.Fatalf("provider dialling its own service reached %v", got)
	}

	// A's listener closes: it stops being picked.
	srvA.Kill()
	if got := w.reach(t, c, 10, "tcp", "10.96.0.10:5432"); got["B"] != 10 {
		t.Fatalf("after A closed: %v", got)
	}
	srvB.Kill()
	if r := w.dial(t, c, "-addr", "10.96.0.10:5432"); r.OK || r.Errno != "ECONNREFUSED" {
		t.Fatalf("all listeners closed: %+v, want ECONNREFUSED", r)
	}
}

func TestIPv6Frontend(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "db", []string{"[fd00::10]:5432"})
	a := w.container(t, "a", backendA)
	b := w.container(t, "b", backendB)
	c := w.container(t, "c", client)
	// Both IPv6-only listeners: pinned to fd00::2 and fd00::3.
	w.listen(t, a, "tcp", "[fd00::2]:5432", "A")
	w.listen(t, b, "tcp", "[fd00::3]:5432", "B")
	if got := w.reach(t, c, 30, "tcp", "[fd00::10]:5432"); got["A"] == 0 || got["B"] == 0 {
		t.Fatalf("[fd00::10]:5432 reached %v, want both", got)
	}
}

func TestUDPRepliesComeFromFrontend(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "dns", []string{"10.96.0.53:53/udp", "127.0.0.1:53/udp"})
	a := w.container(t, "a", `{"addresses": ["127.0.0.2"], "provides": [{"service": "dns", "port": 5353, "protocol": "udp"}]}`)
	b := w.container(t, "b", `{"addresses": ["127.0.0.3"], "provides": [{"service": "dns", "port": 5353, "protocol": "udp"}]}`)
	c := w.container(t, "c", client)
	w.listen(t, a, "udp", "0.0.0.0:5353", "A")
	w.listen(t, b, "udp", "0.0.0.0:5353", "B")
	for _, tc := range []struct {
		name, frontend string
		extra          []string
	}{
		{"connect", "10.96.0.53:53", nil},
		{"sendto", "10.96.0.53:53", []string{"-sendto"}},
		{"sendto v4-mapped", "[::ffff:127.0.0.1]:53", []string{"-sendto"}},
		{"connect v4-mapped", "[::ffff:10.96.0.53]:53", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := w.reach(t, c, 30, "udp", tc.frontend, tc.extra...); got["A"] == 0 || got["B"] == 0 {
				t.Fatalf("reached %v, want both", got)
			}
		})
	}
	// A TCP dial of a UDP-only service is no frontend: left alone.
	if r := w.dial(t, c, "-addr", "10.96.0.53:53"); r.OK || r.Errno == "ECONNREFUSED" && r.Peer != "" {
		t.Fatalf("tcp to a udp frontend: %+v", r)
	}
}

func TestStaticRemoteBackend(t *testing.T) {
	w := newWorld(t)
	remote := testenv.NewNetNS(t)
	w.ns.IP(t, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", remote.Name)
	w.ns.IP(t, "addr", "add", "10.201.0.1/24", "dev", "v0")
	w.ns.IP(t, "link", "set", "v0", "up")
	remote.IP(t, "addr", "add", "10.201.0.2/24", "dev", "v1")
	remote.IP(t, "link", "set", "v1", "up")
	// The remote server is a plain process in the other namespace.
	srv := testenv.Start(t, cgroup.Cgroup{}, remote.Command(w.probe, "listen", "-proto", "tcp", "-addr", "10.201.0.2:5432", "-name", "R"))
	testenv.ParseProbe(t, srv.Line(t, 5*time.Second))

	w.addService(t, "remote", []string{"10.96.0.20:5432"}, "10.201.0.2:5432")
	c := w.container(t, "c", `{}`)
	if got := w.reach(t, c, 5, "tcp", "10.96.0.20:5432"); got["R"] != 5 {
		t.Fatalf("remote backend: %v", got)
	}
	// A host process (no attachment) is left alone: nothing answers the
	// virtual IP for it.
	p := testenv.Start(t, cgroup.Cgroup{}, w.ns.Command(w.probe, "connect", "-addr", "10.96.0.20:5432"))
	if r := testenv.ParseProbe(t, p.Output(t, 10*time.Second)); r.OK {
		t.Fatalf("host process was translated: %+v", r)
	}
}

func TestHostProcessUntouched(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "db", []string{"127.0.0.1:5432"})
	a := w.container(t, "a", backendA)
	c := w.container(t, "c", client)
	w.listen(t, a, "tcp", "0.0.0.0:5432", "A")
	w.listen(t, cgroup.Cgroup{}, "tcp", "127.0.0.1:5432", "H")
	p := testenv.Start(t, cgroup.Cgroup{}, w.ns.Command(w.probe, "connect", "-addr", "127.0.0.1:5432"))
	if r := testenv.ParseProbe(t, p.Output(t, 10*time.Second)); r.Reply != "H" {
		t.Fatalf("host process: %+v, want the host listener H", r)
	}
	if got := w.reach(t, c, 5, "tcp", "127.0.0.1:5432"); got["A"] != 5 {
		t.Fatalf("container: %v, want A", got)
	}
}

func TestBusyboxClientAndServers(t *testing.T) {
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	w := newWorld(t)
	w.addService(t, "web", []string{"10.96.0.80:80"})
	var names []string
	for i, name := range []string{"A", "B"} {
		cg := w.container(t, "web"+name, fmt.Sprintf(`{"addresses": ["127.0.0.%d"], "provides": [{"service": "web", "port": 8080}]}`, i+2))
		root := t.TempDir()
		os.WriteFile(filepath.Join(root, "index.html"), []byte("server "+name+"\n"), 0o644)
		testenv.Start(t, cg, w.ns.Command(busybox, "httpd", "-f", "-p", "0.0.0.0:8080", "-h", root))
		names = append(names, name)
	}
	c := w.container(t, "c", client)
	deadline := time.Now().Add(5 * time.Second)
	for len(w.show(t, "web").Backends) != 2 || !w.show(t, "web").Backends[0].Live || !w.show(t, "web").Backends[1].Live {
		if time.Now().After(deadline) {
			t.Fatalf("busybox httpd backends never became live: %+v", w.show(t, "web").Backends)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// No -q: busybox wget -q crashes in Debian's busybox-static, so the
	// progress goes to stderr.
	seen := map[string]int{}
	for i := 0; i < 20; i++ {
		p := testenv.Start(t, c, w.ns.Command(busybox, "wget", "-O", "-", "http://10.96.0.80/"))
		out := strings.TrimSpace(p.Output(t, 10*time.Second))
		if out == "" {
			t.Fatalf("busybox wget: %s", p.Stderr())
		}
		seen[out]++
	}
	if seen["server A"] == 0 || seen["server B"] == 0 {
		t.Fatalf("busybox wget reached %v, want both", seen)
	}
	// busybox nc to the same frontend.
	p := testenv.Start(t, c, w.ns.Command("sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "+busybox+" nc 10.96.0.80 80"))
	if out := p.Output(t, 10*time.Second); !strings.Contains(out, "server ") {
		t.Fatalf("busybox nc: %q", out)
	}
}

func TestDetachForgetsBackendAndPorts(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "db", []string{"127.0.0.1:5432"})
	a := w.container(t, "a", backendA)
	c := w.container(t, "c", client)
	w.listen(t, a, "tcp", "0.0.0.0:5432", "A")
	w.listen(t, a, "udp", "0.0.0.0:5432", "A")

	s := w.state(t)
	m, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	reg, err := m.Registry()
	if err != nil {
		t.Fatal(err)
	}
	if len(reg) != 2 || reg[0].CgroupID != a.ID || reg[0].Address.String() != "127.0.0.2:5432" || reg[1].Protocol != "udp" {
		t.Fatalf("registry: %+v", reg)
	}
	s.Close()

	w.detach(t, "a")
	s = w.state(t)
	m2, _ := s.Services()
	defer m2.Close()
	if reg, _ := m2.Registry(); len(reg) != 0 {
		t.Fatalf("registry after detach: %+v", reg)
	}
	if svc, _ := m2.Get("db"); len(svc.Backends) != 0 {
		t.Fatalf("backends after detach: %+v", svc.Backends)
	}
	s.Close()
	if r := w.dial(t, c, "-addr", "127.0.0.1:5432"); r.Errno != "ECONNREFUSED" {
		t.Fatalf("after detach: %+v", r)
	}
}

func TestPortMappedProvider(t *testing.T) {
	w := newWorld(t)
	w.addService(t, "db", []string{"10.96.0.10:5432"})
	a := w.container(t, "a", `{"addresses": ["127.0.0.2"], "provides": [{"service": "db", "port": 5432}],
		"portMappings": [{"containerPort": 5432, "hostPort": 15432}]}`)
	c := w.container(t, "c", client)
	w.listen(t, a, "tcp", "0.0.0.0:5432", "A")
	if got := w.reach(t, c, 3, "tcp", "10.96.0.10:5432"); got["A"] != 3 {
		t.Fatalf("port-mapped provider: %v", got)
	}
}

func TestServicesDirAndIdempotentApply(t *testing.T) {
	w := newWorld(t)
	dir := os.Getenv("PORTCULLIS_SERVICES_DIR")
	os.WriteFile(filepath.Join(dir, "db.json"), []byte(`{"name": "db", "frontends": ["127.0.0.1:5432"], "backends": ["127.0.0.9:5432"]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "more.json"), []byte(`[{"name": "cache", "frontends": ["127.0.0.1:6379"]}]`), 0o644)
	// An attach applies services.d.
	w.container(t, "a", backendA)
	decls, err := services.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := w.state(t)
	for i := 0; i < 2; i++ {
		if err := s.ApplyServices(decls); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "cache" || list[1].Name != "db" {
		t.Fatalf("services: %+v", list)
	}
	db := list[1]
	if len(db.Frontends) != 1 || len(db.Backends) != 2 || db.Backends[0].Kind != "static" || db.Backends[1].Kind != "provider" {
		t.Fatalf("db after applying twice: %+v", db)
	}
	// A frontend cannot belong to two services.
	err = m.Put(services.Declaration{Name: "other", Frontends: []services.Endpoint{endpoint(t, "127.0.0.1:5432")}}, nil)
	if err == nil || !strings.Contains(err.Error(), "already belongs to service db") {
		t.Fatalf("conflicting frontend: %v", err)
	}
	if _, err := m.Get("other"); err == nil {
		t.Fatal("a refused service was left behind")
	}
	// A bad file names itself.
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"name": "x", "frontend": []}`), 0o644)
	if _, err := services.LoadDir(dir); err == nil || !strings.Contains(err.Error(), "bad.json") || !strings.Contains(err.Error(), "frontend") {
		t.Fatalf("bad declaration: %v", err)
	}
}

func TestFullBackendMapIsAnError(t *testing.T) {
	w := newWorld(t)
	s := w.state(t)
	m, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d := services.Declaration{Name: "huge", Frontends: []services.Endpoint{endpoint(t, "10.96.0.1:80")}}
	for i := 0; i < 131073; i++ {
		d.Backends = append(d.Backends, endpoint(t, fmt.Sprintf("10.%d.%d.%d:80", i>>16, (i>>8)&255, i&255)))
	}
	err = m.Put(d, nil)
	if err == nil || !strings.Contains(err.Error(), "backends map is full (131072 entries)") {
		t.Fatalf("overfull backends: %v", err)
	}
}
