package services_test

import (
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Remote backends (what portcullisctl sync writes) are picked like static
// ones, are shown with their node, and are kept by everything that
// rewrites a service's other backends: a declaration, static backend add
// and del, and the provider sync of an attach.
func TestRemoteBackendsAreKept(t *testing.T) {
	w := newWorld(t)
	for _, srv := range []struct{ addr, name string }{{"127.0.0.5:17432", "S"}, {"127.0.0.6:17432", "R"}} {
		p := testenv.Start(t, cgroup.Cgroup{}, w.ns.Command(w.probe, "listen", "-proto", "tcp", "-addr", srv.addr, "-name", srv.name))
		testenv.ParseProbe(t, p.Line(t, 5*time.Second))
	}
	w.addService(t, "db", []string{"127.17.9.1:17432"}, "127.0.0.5:17432")
	// The maps without the state's lock: the helpers below take it.
	m, err := services.Open(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	svc, err := m.Get("db")
	if err != nil {
		t.Fatal(err)
	}
	remote := services.Remote{Node: "host-b", Endpoint: endpoint(t, "127.0.0.6:17432")}
	if changed, err := m.SetRemotes(svc, []services.Remote{remote}, nil); err != nil || !changed {
		t.Fatalf("SetRemotes: changed %v, %v", changed, err)
	}
	if changed, err := m.SetRemotes(w.show(t, "db"), []services.Remote{remote}, nil); err != nil || changed {
		t.Fatalf("SetRemotes again: want no change, got changed %v, %v", changed, err)
	}
	if _, err := m.SetRemotes(svc, []services.Remote{{Node: "a:b", Endpoint: remote.Endpoint}}, nil); err == nil {
		t.Error("a node name with ':' was accepted")
	}
	c := w.container(t, "c", `{}`)
	if got := w.reach(t, c, 20, "tcp", "127.17.9.1:17432"); got["S"] == 0 || got["R"] == 0 {
		t.Errorf("want both the static and the remote backend picked, got %v", got)
	}

	check := func(when string) {
		t.Helper()
		svc := w.show(t, "db")
		remotes := services.RemotesOf(svc)
		if len(remotes) != 1 || remotes[0] != remote {
			t.Errorf("%s: want remote %v, got %+v", when, remote, svc.Backends)
		}
		for _, b := range svc.Backends {
			if b.Kind == "static" && b.Node != "" {
				t.Errorf("%s: static backend with a node: %+v", when, b)
			}
		}
	}
	check("after SetRemotes")
	w.addService(t, "db", []string{"127.17.9.1:17432"}, "127.0.0.5:17432")
	check("after the declaration again")
	w.container(t, "p", `{"provides": [{"service": "db", "port": 17432, "protocol": "tcp"}]}`)
	check("after a provider attached")
	if err := m.AddBackend("db", endpoint(t, "127.0.0.7:17432"), nil); err != nil {
		t.Fatal(err)
	}
	if err := m.DelBackend("db", endpoint(t, "127.0.0.7:17432"), nil); err != nil {
		t.Fatal(err)
	}
	check("after static backend add and del")
	if err := m.DelBackend("db", remote.Endpoint, nil); err == nil {
		t.Error("service backend del removed a remote backend: it belongs to sync")
	}
	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Errorf("node names leaked into the service list: %+v", list)
	}

	if _, err := m.SetRemotes(w.show(t, "db"), nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := w.reach(t, c, 10, "tcp", "127.17.9.1:17432"); got["R"] != 0 {
		t.Errorf("removed remote backend still picked: %v", got)
	}
}
