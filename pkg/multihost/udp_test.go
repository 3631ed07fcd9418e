package multihost_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// udpOnce sends one datagram from a container to addr on an unconnected
// socket (sendto) and reports the reply and its source.
func (h *host) udpOnce(t *testing.T, cg cgroup.Cgroup, addr string) testenv.ProbeResult {
	t.Helper()
	p := testenv.Start(t, cg, h.ns.Command(h.probe, "connect", "-proto", "udp", "-sendto", "-addr", addr))
	defer p.Kill()
	return testenv.ParseProbe(t, p.Line(t, 10*time.Second))
}

// A UDP provider on A serves B's clients through the frontend (declared
// on A only), connected or not; the reply's source and getpeername show
// the frontend; it is withdrawn like a TCP one: when it stops (B's
// connected client is aborted, new ones refused) and when A's lease
// expires.
func TestUDPAcrossHosts(t *testing.T) {
	members, _ := testenv.EtcdAddrs(t, 3)
	cluster := testenv.StartEtcd(t, members...)
	a, b := twoHosts(t)
	a.etcd, b.etcd = cluster.Endpoints(), cluster.Endpoints()
	const (
		dnsFE = "127.17.1.6:17453"
		dnsAt = addrA + ":17453"
	)
	a.apply(t, decl("dns", dnsFE+"/udp"))
	provA := a.container(t, "provider", fmt.Sprintf(`{"addresses": [%q], "provides": [{"service": "dns", "port": 17453, "protocol": "udp"}]}`, addrA))
	client := b.container(t, "client", `{}`)
	a.startSync(t, "3s")
	b.startSync(t, "3s")

	listenA := a.listenOn(t, provA, "udp", dnsAt, "A")
	b.waitService(t, "dns", "declared by A, with A's UDP backend", 5*time.Second, func(s *services.Service) bool {
		if s == nil || s.DeclaredBy != "a" || !frontendsAre(s, dnsFE+"/udp") {
			return false
		}
		r := services.RemotesOf(s)
		return len(r) == 1 && r[0].Endpoint.String() == dnsAt+"/udp"
	})
	// Connected: getpeername and the reply's source are the frontend.
	r := b.eventuallyTo(t, client, "udp", dnsFE, "reach A's UDP provider", 5*time.Second, answeredBy("A"))
	if r.Peer != dnsFE || r.PeerName != dnsFE {
		t.Errorf("connected UDP on B: want the reply from and getpeername %s, got reply from %s, getpeername %s", dnsFE, r.Peer, r.PeerName)
	}
	// Unconnected (sendto): the reply comes from the frontend too.
	if r := b.udpOnce(t, client, dnsFE); !answeredBy("A")(r) || r.Peer != dnsFE {
		t.Errorf("sendto on B: want A's reply from %s, got %+v", dnsFE, r)
	}

	// A's provider stops: B's connected client of it ends (A's ICMP port
	// unreachable, ECONNREFUSED, usually comes before the withdrawal
	// aborts it), the backend leaves B's maps, and new clients are
	// refused.
	r, held := b.dialTo(t, client, "udp", dnsFE, true)
	if !answeredBy("A")(r) {
		t.Fatalf("held UDP client on B: %+v", r)
	}
	listenA.Kill()
	if hr := testenv.ParseProbe(t, held.Line(t, 10*time.Second)); hr.Errno != "ECONNREFUSED" && !udpAborted(hr) {
		t.Errorf("B's connected UDP client after A's provider stopped: want ECONNREFUSED or ECONNABORTED, got %+v", hr)
	}
	b.waitService(t, "dns", "A's backend withdrawn", 5*time.Second, func(s *services.Service) bool {
		return s != nil && len(services.RemotesOf(s)) == 0
	})
	b.eventuallyTo(t, client, "udp", dnsFE, "no UDP backend on B", 5*time.Second, refused)

	// It serves again; then A's sync dies: after the TTL B's client is
	// aborted (A's provider still serves: only the withdrawal ends it)
	// and dns is withdrawn from B.
	a.listenOn(t, provA, "udp", dnsAt, "A")
	b.eventuallyTo(t, client, "udp", dnsFE, "reach A's UDP provider again", 5*time.Second, answeredBy("A"))
	r, held = b.dialTo(t, client, "udp", dnsFE, true)
	if !answeredBy("A")(r) {
		t.Fatalf("held UDP client on B: %+v", r)
	}
	a.sync.Kill()
	killed := time.Now()
	hr := testenv.ParseProbe(t, held.Line(t, 10*time.Second))
	t.Logf("B's UDP client of A ended %s after A's sync was killed: %+v", time.Since(killed).Round(time.Millisecond), hr)
	if !udpAborted(hr) {
		t.Errorf("B's connected UDP client after A's lease expired: want it destroyed (ECONNABORTED), got %+v", hr)
	}
	b.waitService(t, "dns", "withdrawn with A's lease", 5*time.Second, func(s *services.Service) bool { return s == nil })
}

// udpAborted tells whether a held connected UDP client saw its socket
// destroyed: the kernel disconnects it with sk_err ECONNABORTED, so a
// blocked receive returns ECONNABORTED and a send on the now unconnected
// socket EDESTADDRREQ (as in pkg/terminate's tests).
func udpAborted(r testenv.ProbeResult) bool {
	return r.Errno == "ECONNABORTED" || r.Errno == "EDESTADDRREQ"
}
