package egress_test

// The kernel against the model: random rule sets attached to a real
// cgroup, random destinations connected to and sent to from inside it,
// every answer compared with the reference evaluation.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestKernelMatchesTheReference(t *testing.T) {
	dir := testenv.StateDir(t)
	// Two nonprod containers give their addresses the group.
	nonprod := map[netip.Addr]bool{}
	for i, a := range []string{"127.13.0.1", "127.13.1.3"} {
		cg := testenv.Cgroup(t, "np")
		testenv.Attach(t, dir, fmt.Sprintf("np%d", i), cg.Path, fmt.Sprintf(`{"addresses": [%q], "groups": ["nonprod"]}`, a), "")
		nonprod[netip.MustParseAddr(a)] = true
	}
	groupsOf := func(a netip.Addr) []string {
		if nonprod[a] {
			return []string{"nonprod"}
		}
		return nil
	}
	r := rand.New(rand.NewSource(1313))
	denied, total := 0, 0
	for round := 0; round < 6; round++ {
		p := RandomPolicy(r, 4+r.Intn(8))
		doc, _ := json.Marshal(p)
		cg := testenv.Cgroup(t, "prod")
		id := fmt.Sprintf("prod%d", round)
		testenv.Attach(t, dir, id, cg.Path, string(doc), "")
		probe := guardtest.Start(t, cg, nil)
		for i := 0; i < 40; i++ {
			dst := netip.AddrFrom4([4]byte{127, 13, byte(r.Intn(4)), byte(r.Intn(4))})
			if r.Intn(5) == 0 {
				dst = netip.MustParseAddr("::1")
			}
			port := uint16(13000 + r.Intn(10))
			ap := netip.AddrPortFrom(dst, port).String()
			proto := []policy.Protocol{policy.TCP, policy.UDP}[r.Intn(2)]
			allowed := reference(p, dst, port, proto, groupsOf)
			reply := probe.Do(t, "connect %s %s", proto, ap)
			if proto == policy.UDP && r.Intn(2) == 0 {
				reply = probe.Do(t, "sendto %s", ap)
			}
			if got := reply.Errno != "EPERM"; got != allowed {
				t.Fatalf("rules %s: %s %s: kernel said %+v, the reference allowed=%v", doc, proto, ap, reply, allowed)
			}
			total++
			if !allowed {
				denied++
			}
			if reply.OK && reply.ID != 0 {
				probe.Close(t, reply.ID)
			}
		}
		testenv.Detach(t, dir, id)
	}
	// Both answers must have been exercised for the comparison to mean
	// anything.
	t.Logf("%d of %d probes denied", denied, total)
	if denied == 0 || denied == total {
		t.Fatalf("%d of %d probes denied: the random rules do not cover both answers", denied, total)
	}
}

// Rules see the backend a service address was translated to, not the
// service address.
func TestEgressAfterServiceTranslation(t *testing.T) {
	dir := testenv.StateDir(t)
	np := testenv.Cgroup(t, "np")
	testenv.Attach(t, dir, "np", np.Path, `{"addresses": ["127.13.2.2"], "groups": ["nonprod"]}`, "")
	guardtest.Serve(t, np, "127.13.2.2:13012")
	guardtest.Listen(t, "127.13.2.3:13012")
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	var decls []services.Declaration
	for name, pair := range map[string][2]string{"np-svc": {"127.13.9.1:13012", "127.13.2.2:13012"}, "ok-svc": {"127.13.9.2:13012", "127.13.2.3:13012"}} {
		d := services.Declaration{Name: name}
		for _, proto := range []string{"tcp", "udp"} {
			f, _ := services.ParseEndpoint(pair[0] + "/" + proto)
			b, _ := services.ParseEndpoint(pair[1] + "/" + proto)
			d.Frontends, d.Backends = append(d.Frontends, f), append(d.Backends, b)
		}
		decls = append(decls, d)
	}
	err = s.ApplyServices(decls)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	prod := testenv.Cgroup(t, "prod")
	testenv.Attach(t, dir, "prod", prod.Path, `{"egress": [
		{"action": "deny", "group": "nonprod"},
		{"action": "deny", "cidr": "127.13.2.2/32"},
		{"action": "allow", "cidr": "127.13.2.0/24"},
		{"action": "deny", "cidr": "127.13.9.0/24"}]}`, "")
	p := guardtest.Start(t, prod, nil)
	p.Connect(t, "tcp", "127.13.9.1:13012", "EPERM")
	p.Connect(t, "udp", "127.13.9.1:13012", "EPERM")
	p.SendTo(t, "127.13.9.1:13012", "EPERM")
	p.Connect(t, "tcp", "127.13.9.2:13012", "")
	p.SendTo(t, "127.13.9.2:13012", "")
}

// A pod's policy keyed by its network namespace: the rules and caps hold
// for every task in the namespace, and --terminate's iterators scan only
// that namespace and destroy what the new rules deny there.
func TestNetNSKeyedPod(t *testing.T) {
	dir := testenv.StateDir(t)
	pod := testenv.NewNetNS(t)
	parent := testenv.Cgroup(t, "pods")
	task := testenv.ChildCgroup(t, parent, "app")
	p, err := policy.Parse([]byte(`{"connectionLimits": {"perDestination": 1},
		"egress": [{"action": "deny", "cidr": "127.0.0.2/32"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "pod", Policy: p, NetNS: pod.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
		t.Fatal(err)
	}
	listener := testenv.Start(t, task, pod.Command(testenv.Binary(t, "./test/sockprobe"), "listen", "-addr", "127.0.0.1:13080"))
	if r := testenv.ParseProbe(t, listener.Line(t, 5e9)); !r.OK {
		t.Fatalf("listen in the pod: %+v", r)
	}
	probe := guardtest.Start(t, task, pod.Command)
	probe.Connect(t, "tcp", "127.0.0.2:13080", "EPERM")
	held := probe.Connect(t, "tcp", "127.0.0.1:13080", "")
	probe.Connect(t, "tcp", "127.0.0.1:13080", "EAGAIN")

	// Rules judge outgoing connections only: the server's end of the
	// connection, whose peer is the client's port, is not terminated.
	others, _ := policy.Parse([]byte(`{"connectionLimits": {"perDestination": 1},
		"egress": [{"action": "deny", "ports": ["1-13079", "13081-65535"], "protocol": "tcp"}]}`))
	a, err := s.SetPolicy("pod", others)
	if err != nil {
		t.Fatal(err)
	}
	if report, err := terminate.Denied(s, a, false); err != nil || report.Matched != 0 {
		t.Fatalf("terminate with only the server's end denied: %+v, %v; want nothing matched", report, err)
	}
	probe.Alive(t, held)

	deny, _ := policy.Parse([]byte(`{"connectionLimits": {"perDestination": 1}, "egress": [{"action": "deny", "cidr": "127.0.0.0/8"}]}`))
	a, err = s.SetPolicy("pod", deny)
	if err != nil {
		t.Fatal(err)
	}
	probe.Alive(t, held)
	report, err := terminate.Denied(s, a, false)
	if err != nil {
		t.Fatal(err)
	}
	if report.Destroyed != 1 || len(report.Namespaces) != 1 || report.Namespaces[0].NetNS != pod.Path {
		t.Fatalf("terminate report %+v, want one socket destroyed, in the pod's namespace only", report)
	}
	probe.Aborted(t, held)
}

// A policy without rules and caps skips their lookups at connect and
// sendmsg (POLICY_NO_EGRESS, POLICY_NO_LIMITS in bpf/common.h): rules and
// caps that a policy change adds in place must hold from the next connect,
// and go when the policy drops them again.
func TestRulesAndCapsAddedInPlace(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "inplace")
	dst := guardtest.Listen(t, "127.13.3.3:13013")
	guardtest.ListenUDP(t, "127.13.3.3:13014")
	testenv.Attach(t, dir, "inplace", cg.Path, `{"addresses": ["127.13.3.2"]}`, "")
	p := guardtest.Start(t, cg, nil)
	p.Connect(t, "tcp", dst.Addr, "")
	p.SendTo(t, "127.13.3.3:13014", "")

	set := func(doc string) {
		t.Helper()
		testenv.SetPolicy(t, dir, "inplace", doc)
	}
	set(`{"addresses": ["127.13.3.2"], "egress": [{"action": "deny", "cidr": "127.13.3.3/32"}]}`)
	p.Connect(t, "tcp", dst.Addr, "EPERM")
	p.Connect(t, "udp", "127.13.3.3:13014", "EPERM")
	p.SendTo(t, "127.13.3.3:13014", "EPERM")

	set(`{"addresses": ["127.13.3.2"], "connectionLimits": {"perDestination": 1}}`)
	held := p.Connect(t, "tcp", dst.Addr, "")
	p.Connect(t, "tcp", dst.Addr, "EAGAIN")
	p.SendTo(t, "127.13.3.3:13014", "")

	set(`{"addresses": ["127.13.3.2"]}`)
	p.Connect(t, "tcp", dst.Addr, "")
	p.Connect(t, "tcp", dst.Addr, "")
	p.Alive(t, held)
}
