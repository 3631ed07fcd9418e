package multihost_test

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// partition silently drops every packet to or from the members' second
// client addresses, alt, which only A's sync uses: A is cut off from every
// member while B and the members keep talking (loopback:
// the syncs and the members run in the host namespace, so the rule is
// there, in a table of its own that matches only these addresses). heal
// deletes the table; so does the test's cleanup.
func partition(t *testing.T, alt []string) (heal func()) {
	t.Helper()
	nft := testenv.RequireCommand(t, "nft", "nftables")
	table := "pc17part" + strings.ReplaceAll(testenv.Suffix(), "-", "")
	addrs := strings.Join(alt, ", ")
	ruleset := fmt.Sprintf(`table inet %s {
	chain out {
		type filter hook output priority -300; policy accept;
		ip daddr { %s } drop
		ip saddr { %s } drop
	}
}
`, table, addrs, addrs)
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	healed := false
	heal = func() {
		if !healed {
			healed = true
			if out, err := exec.Command(nft, "delete", "table", "inet", table).CombinedOutput(); err != nil {
				t.Errorf("nft delete table %s: %v\n%s", table, err, out)
			}
		}
	}
	t.Cleanup(heal)
	return heal
}

// A's sync is cut off from etcd: A keeps enforcing what it knows; after
// the TTL B drops A's backends and the services only A declares (B's
// clients of A are aborted); when the partition heals A resyncs (a full
// read, then a watch from its revision), republishes, and B picks A
// again; neither side keeps a backend that was withdrawn meanwhile.
func TestPartition(t *testing.T) {
	members, alt := testenv.EtcdAddrs(t, 3)
	cluster := testenv.StartEtcdAlt(t, members, alt)
	a, b := twoHosts(t)
	a.etcd, b.etcd = cluster.AltEndpoints(), cluster.Endpoints()
	const kvFE = "127.17.1.2:17433"
	a.apply(t, decl("kv", kvFE))
	provA := a.container(t, "provider", provides(addrA))
	clientA := a.container(t, "client", `{}`)
	provB := b.container(t, "provider", provides(addrB))
	client := b.container(t, "client", `{}`)
	a.startSync(t, "3s")
	b.startSync(t, "3s")
	a.listen(t, provA, addrA, "A")
	listenB := b.listen(t, provB, addrB, "B")
	a.waitRemotes(t, 1)
	b.waitRemotes(t, 1)
	b.waitService(t, "kv", "declared by A", 5*time.Second, func(s *services.Service) bool { return s != nil && s.DeclaredBy == "a" })
	held := b.holdConnectionTo(t, client, "A")
	if held == nil {
		t.Fatal("B never picked A's provider")
	}

	heal := partition(t, alt)
	cut := time.Now()
	// B's provider stops while A cannot hear of it.
	listenB.Kill()
	b.remotesWithin(t, 1, time.Second) // B still has A's (the TTL has not run out)

	// A keeps enforcing on its own: its frontend still resolves, to its
	// own provider (and to the remote backends it last knew).
	a.eventually(t, clientA, "A's client reaches A's provider while A is cut off", 5*time.Second, answeredBy("A"))

	// After the TTL, B drops A's backend and A's kv; B's client of A is
	// aborted.
	hr := testenv.ParseProbe(t, held.Line(t, 15*time.Second))
	t.Logf("B's held client of A ended %s after the partition: %+v", time.Since(cut).Round(time.Millisecond), hr)
	if hr.Errno != "ECONNABORTED" {
		t.Errorf("B's client of A after A was cut off: want ECONNABORTED, got %+v", hr)
	}
	b.remotesWithin(t, 0, 5*time.Second)
	b.waitService(t, "kv", "withdrawn with A's lease", 5*time.Second, func(s *services.Service) bool { return s == nil })
	b.eventually(t, client, "no backend left on B", 5*time.Second, refused)

	// A cannot know that B's provider stopped: it still has B's backend,
	// and it sees its own lease lapse.
	waitLog(t, a, "lost (no renewal within the ttl)", 10*time.Second)
	if n := len(services.RemotesOf(a.show(t, "db"))); n != 1 {
		t.Errorf("A while cut off: want the 1 remote backend it last knew, have %d", n)
	}
	// A retries meanwhile (a new lease, a full read), in vain.
	waitLog(t, a, "(retrying)", 10*time.Second)
	time.Sleep(2 * time.Second)
	resyncs := strings.Count(a.sync.Stderr(), "etcd: resynced at revision")

	heal()
	healed := time.Now()
	// A resyncs: the full read drops B's withdrawn backend; A republishes
	// under a new lease and B picks A again.
	a.remotesWithin(t, 0, 15*time.Second)
	t.Logf("A dropped B's stale backend %s after the heal", time.Since(healed).Round(time.Millisecond))
	b.remotesWithin(t, 1, 15*time.Second)
	b.eventually(t, client, "B picks A again", 5*time.Second, answeredBy("A"))
	t.Logf("B picks A again %s after the heal", time.Since(healed).Round(time.Millisecond))
	b.waitService(t, "kv", "declared by A again", 5*time.Second, func(s *services.Service) bool { return s != nil && s.DeclaredBy == "a" })
	if n := strings.Count(a.sync.Stderr(), "etcd: resynced at revision"); n <= resyncs {
		t.Errorf("A did not resync with a full read after the heal (%d resyncs before, %d after)", resyncs, n)
	}

	// No stale keys either: etcd holds A's backend only, under A's new
	// lease.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cluster.Client().Get(ctx, "/portcullis/backends/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), "/portcullis/backends/"))
	}
	if want := []string{fmt.Sprintf("db/a/%s:%d/tcp", addrA, port)}; !slices.Equal(keys, want) {
		t.Errorf("backends in etcd after the heal: want %v, have %v", want, keys)
	}
}
