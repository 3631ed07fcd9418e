package multihost_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// A service declared on one host only becomes a service of the others
// (frontends from that host's declaration, backends from every host), and
// goes when no host declares it any more; two declarations of one service
// that differ are resolved by the conflict rule and logged.
func TestDeclarationsAcrossHosts(t *testing.T) {
	members, _ := testenv.EtcdAddrs(t, 3)
	cluster := testenv.StartEtcd(t, members...)
	a, b := twoHosts(t)
	a.etcd, b.etcd = cluster.Endpoints(), cluster.Endpoints()
	const (
		kvFE  = "127.17.1.2:17433"
		kvFE2 = "127.17.1.3:17433"
	)
	// kv is declared on A only; mq on both, differently.
	a.apply(t, decl("kv", kvFE), decl("mq", "127.17.1.4:17434"))
	b.apply(t, decl("mq", "127.17.1.5:17434"))
	provA := a.container(t, "provider", fmt.Sprintf(`{"addresses": [%q], "provides": [{"service": "kv", "port": 17433, "protocol": "tcp"}]}`, addrA))
	client := b.container(t, "client", `{}`)
	a.startSync(t, "3s")
	b.startSync(t, "3s")
	a.listenOn(t, provA, "tcp", addrA+":17433", "A")

	// B gets kv from A's declaration, with A's provider as its backend.
	b.waitService(t, "kv", "declared by A, with A's backend", 5*time.Second, func(s *services.Service) bool {
		return s != nil && s.DeclaredBy == "a" && frontendsAre(s, kvFE+"/tcp") && len(services.RemotesOf(s)) == 1
	})
	r := b.eventuallyTo(t, client, "tcp", kvFE, "reach A's kv provider", 5*time.Second, answeredBy("A"))
	if r.Peer != kvFE {
		t.Errorf("getpeername on B: want kv's frontend %s, got %s", kvFE, r.Peer)
	}
	if table := testenv.Run(t, b.ctl, "--state-dir", b.dir, "service", "show", "kv"); !strings.Contains(table, "declared by: node a") {
		t.Errorf("service show kv on B does not name the declaring node:\n%s", table)
	}

	// Each host publishes only its own declarations (B not the kv it
	// adopted).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	etcd := cluster.Client()
	keys := func() []string {
		resp, err := etcd.Get(ctx, "/portcullis/services/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var list []string
		for _, kv := range resp.Kvs {
			list = append(list, strings.TrimPrefix(string(kv.Key), "/portcullis/services/"))
		}
		return list
	}
	if have, want := keys(), []string{"db/a", "db/b", "kv/a", "mq/a", "mq/b"}; !slices.Equal(have, want) {
		t.Errorf("declarations in etcd: want %v, have %v", want, have)
	}

	// mq is declared on both hosts, differently: each keeps its own and
	// logs the conflict.
	for _, h := range []*host{a, b} {
		waitLog(t, h, "service mq: conflict", 5*time.Second)
	}
	if mq := b.show(t, "mq"); mq == nil || mq.DeclaredBy != "" || !frontendsAre(mq, "127.17.1.5:17434/tcp") {
		t.Errorf("B's mq: want B's own declaration, have %+v", mq)
	}

	// A third node declares kv differently: A's declaration still applies
	// on B (a sorts before c), and B logs the conflict.
	lease, err := etcd.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Put(ctx, "/portcullis/services/kv/c", fmt.Sprintf(`{"node": "c", "name": "kv", "frontends": [%q]}`, kvFE2), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	waitLog(t, b, "service kv: conflict: node a declares frontends "+kvFE+"/tcp, node c declares frontends "+kvFE2+"/tcp; node a's applies", 5*time.Second)
	if kv := b.show(t, "kv"); kv == nil || kv.DeclaredBy != "a" || !frontendsAre(kv, kvFE+"/tcp") {
		t.Errorf("B's kv after c's declaration: want A's, have %+v", kv)
	}

	// A withdraws kv (its provider still listens): c's declaration
	// applies on B now, with A's backend kept.
	testenv.Run(t, a.ctl, "--state-dir", a.dir, "service", "del", "kv")
	b.waitService(t, "kv", "declared by c", 5*time.Second, func(s *services.Service) bool {
		return s != nil && s.DeclaredBy == "c" && frontendsAre(s, kvFE2+"/tcp") && len(services.RemotesOf(s)) == 1
	})
	b.eventuallyTo(t, client, "tcp", kvFE, "A's old frontend is gone on B", 5*time.Second, refused)
	var held *testenv.Proc
	if r, p := b.dialTo(t, client, "tcp", kvFE2, true); answeredBy("A")(r) {
		held = p
	} else {
		t.Fatalf("B's client through c's kv frontend: want A's provider, got %+v", r)
	}

	// Nobody declares kv any more: B deletes it, and its client of A
	// through kv is aborted.
	if _, err := etcd.Delete(ctx, "/portcullis/services/kv/c"); err != nil {
		t.Fatal(err)
	}
	b.waitService(t, "kv", "deleted", 5*time.Second, func(s *services.Service) bool { return s == nil })
	if hr := testenv.ParseProbe(t, held.Line(t, 5*time.Second)); hr.Errno != "ECONNABORTED" {
		t.Errorf("B's client through the withdrawn kv: want ECONNABORTED, got %+v", hr)
	}
	waitLog(t, b, "service kv: withdrawn", time.Second)
	b.eventuallyTo(t, client, "tcp", kvFE2, "kv's frontend is gone on B", 5*time.Second, refused)

	// Declaring kv on B makes it B's own: A adopts it from B.
	b.apply(t, decl("kv", kvFE))
	a.waitService(t, "kv", "declared by B", 5*time.Second, func(s *services.Service) bool {
		return s != nil && s.DeclaredBy == "b" && frontendsAre(s, kvFE+"/tcp")
	})
	if kv := b.show(t, "kv"); kv == nil || kv.DeclaredBy != "" {
		t.Errorf("B's kv after declaring it on B: want B's own, have %+v", kv)
	}
}

// waitLog waits until the host's sync has logged s.
func waitLog(t *testing.T, h *host, s string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(h.sync.Stderr(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("host %s: sync did not log %q within %s", h.name, s, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
