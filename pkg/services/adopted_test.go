package services_test

import (
	"errors"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// An adopted service (another host's declaration, what sync writes) keeps
// its remote backends and names its node; a local declaration of it makes
// it this host's own, and a service declared here is never adopted; its
// mark goes with the service, so a service that reuses its id is not
// adopted.
func TestAdoptedServices(t *testing.T) {
	w := newWorld(t)
	if s, err := state.OpenOrLoad(w.dir); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	m, err := services.Open(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	kv := services.Declaration{Name: "kv", Frontends: []services.Endpoint{endpoint(t, "127.17.9.2:17433")}, Backends: []services.Endpoint{endpoint(t, "127.0.0.9:17433")}}
	if err := m.Adopt(kv, "host-a", nil); err != nil {
		t.Fatal(err)
	}
	svc := w.show(t, "kv")
	if svc.DeclaredBy != "host-a" || len(svc.Frontends) != 1 || len(svc.Backends) != 1 || svc.Backends[0].Kind != "static" {
		t.Fatalf("adopted kv: %+v", svc)
	}
	d := services.DeclarationOf(svc)
	if !d.Equal(&kv) {
		t.Errorf("DeclarationOf the adopted kv: want %s, got %s", kv, d)
	}
	remote := services.Remote{Node: "host-a", Endpoint: endpoint(t, "127.0.0.6:17433")}
	if _, err := m.SetRemotes(svc, []services.Remote{remote}, nil); err != nil {
		t.Fatal(err)
	}
	// Another node's declaration replaces the frontends and statics and
	// keeps the remote backends.
	kv2 := services.Declaration{Name: "kv", Frontends: []services.Endpoint{endpoint(t, "127.17.9.3:17433")}}
	if err := m.Adopt(kv2, "host-c", nil); err != nil {
		t.Fatal(err)
	}
	svc = w.show(t, "kv")
	if d := services.DeclarationOf(svc); svc.DeclaredBy != "host-c" || !d.Equal(&kv2) || len(services.RemotesOf(svc)) != 1 {
		t.Errorf("kv after host-c's declaration: %+v", svc)
	}
	list, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Errorf("adoption marks leaked into the service list: %+v", list)
	}

	// Declared here: this host's own, with the remote backend kept.
	w.addService(t, "kv", []string{"127.17.9.4:17433"})
	if svc := w.show(t, "kv"); svc.DeclaredBy != "" || len(services.RemotesOf(svc)) != 1 {
		t.Errorf("kv declared here: want this host's own with its remote backend, got %+v", svc)
	}
	m2, err := services.Open(w.dir) // a fresh read of svc_names
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.Adopt(kv, "host-a", nil); !errors.Is(err, services.ErrDeclaredHere) {
		t.Errorf("adopting a service declared here: want ErrDeclaredHere, got %v", err)
	}

	// Deleting an adopted service removes its mark: the next service
	// (which gets the same id) is this host's.
	if err := m2.Adopt(services.Declaration{Name: "mq", Frontends: []services.Endpoint{endpoint(t, "127.17.9.5:17434")}}, "host-a", nil); err != nil {
		t.Fatal(err)
	}
	mq := w.show(t, "mq")
	if err := m2.Delete("mq"); err != nil {
		t.Fatal(err)
	}
	w.addService(t, "web", []string{"127.17.9.6:17435"})
	if web := w.show(t, "web"); web.ID != mq.ID || web.DeclaredBy != "" {
		t.Errorf("web after the adopted mq was deleted: want id %d and declared here, got %+v", mq.ID, web)
	}
}
