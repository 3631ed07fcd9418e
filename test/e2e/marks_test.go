package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// nftCounter reads a named counter's packets in a namespace.
func nftCounter(t *testing.T, ns *testenv.NetNS, name string) uint64 {
	t.Helper()
	var out struct {
		Nftables []struct {
			Counter *struct {
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(ns.Exec(t, "nft", "-j", "list", "counter", "inet", "pc14", name)), &out); err != nil {
		t.Fatal(err)
	}
	for _, o := range out.Nftables {
		if o.Counter != nil {
			return o.Counter.Packets
		}
	}
	t.Fatalf("no nft counter %s", name)
	return 0
}

// TestMarkPriorityAndDSCPOnTheWire: a container in its own network
// namespace ("ctr", veth to "net") with mark, priority and dscp in its
// policy. Every TCP and UDP packet its sockets send - IPv4, IPv6 and
// v4-mapped on a dual-stack socket, as client and as server - leaves the
// veth with the mark and priority (nftables in ctr, where the skb still has
// them; a netns crossing clears the mark) and arrives in the other
// namespace with the DSCP (nftables in net, outside the container), except
// the first datagram of a never-bound unconnected UDP socket (docs/metrics.md
// says why).
func TestMarkPriorityAndDSCPOnTheWire(t *testing.T) {
	testenv.RequireCommand(t, "nft", "nftables")
	dir := testenv.StateDir(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	probe := testenv.Binary(t, "./test/sockprobe")
	ctr, net := testenv.NewNetNS(t), testenv.NewNetNS(t)
	veth := "pc14v" + testenv.Suffix()[:4]
	testenv.Run(t, "ip", "link", "add", veth, "netns", ctr.Name, "type", "veth", "peer", "name", "pc14n", "netns", net.Name)
	ctr.IP(t, "addr", "add", "10.14.1.1/24", "dev", veth)
	ctr.IP(t, "addr", "add", "fd14:1::1/64", "dev", veth, "nodad")
	ctr.IP(t, "link", "set", veth, "up")
	net.IP(t, "addr", "add", "10.14.1.2/24", "dev", "pc14n")
	net.IP(t, "addr", "add", "fd14:1::2/64", "dev", "pc14n", "nodad")
	net.IP(t, "link", "set", "pc14n", "up")

	// all* count every TCP/UDP packet leaving (ctr) or arriving (net);
	// marked* only those with the policy's values. twack4 and ctlrst4
	// count the two kinds of packet that leave with the mark but without
	// the priority, both sent for a container's IPv4 socket by the
	// kernel's per-CPU TCP control socket, which since Linux 6.14 gives
	// them priority 0 (docs/metrics.md says why): the bare ACK of a
	// TIME_WAIT socket (a connection's socket becomes one before the
	// peer's FIN arrives when that FIN is late, under load) and a bare
	// RST, which also carries the TOS of the segment it answers, not the
	// DSCP (rst4 counts it arriving in net). There are 0 to 3 of each:
	// the two IPv4 client connections and the IPv4 one accepted by the
	// container's server.
	nft := func(ns *testenv.NetNS, rules string) {
		cmd := ns.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
	}
	nft(ctr, `table inet pc14 {
	counter all4 {}
	counter all6 {}
	counter marked4 {}
	counter marked6 {}
	counter twack4 {}
	counter ctlrst4 {}
	chain post {
		type filter hook postrouting priority 0;
		oifname "`+veth+`" meta nfproto ipv4 meta l4proto tcp meta mark 0x1401 meta priority none tcp flags == ack counter name twack4
		oifname "`+veth+`" meta nfproto ipv4 meta l4proto tcp meta mark 0x1401 meta priority none tcp flags == rst counter name ctlrst4
		oifname "`+veth+`" meta l4proto { tcp, udp } meta nfproto ipv4 counter name all4
		oifname "`+veth+`" meta l4proto { tcp, udp } meta nfproto ipv6 counter name all6
		oifname "`+veth+`" meta l4proto { tcp, udp } meta nfproto ipv4 meta mark 0x1401 meta priority 0:5 counter name marked4
		oifname "`+veth+`" meta l4proto { tcp, udp } meta nfproto ipv6 meta mark 0x1401 meta priority 0:5 counter name marked6
	}
}`)
	nft(net, `table inet pc14 {
	counter all4 {}
	counter all6 {}
	counter marked4 {}
	counter marked6 {}
	counter rst4 {}
	chain pre {
		type filter hook prerouting priority 0;
		iifname "pc14n" meta nfproto ipv4 meta l4proto tcp ip saddr 10.14.1.1 tcp flags == rst ip dscp cs0 counter name rst4
		iifname "pc14n" meta l4proto { tcp, udp } meta nfproto ipv4 counter name all4
		iifname "pc14n" meta l4proto { tcp, udp } meta nfproto ipv6 counter name all6
		iifname "pc14n" meta l4proto { tcp, udp } ip dscp ef counter name marked4
		iifname "pc14n" meta l4proto { tcp, udp } ip6 dscp ef counter name marked6
	}
}`)

	cg := testenv.Cgroup(t, "marks")
	policyFile := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(policyFile, []byte(`{"mark": 5121, "priority": 5, "dscp": 46}`), 0o644)
	if out, err := exec.Command(ctl, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", policyFile, "--id", "marks", "--netns", ctr.Path).CombinedOutput(); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}

	// Servers outside the container, in net.
	for _, l := range [][2]string{{"tcp", "10.14.1.2:14040"}, {"udp", "10.14.1.2:14041"}, {"tcp", "[fd14:1::2]:14042"}, {"udp", "[fd14:1::2]:14043"}} {
		p := testenv.Start(t, testenv.Cgroup(t, "marks-peer"), net.Command(probe, "listen", "-proto", l[0], "-addr", l[1]))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("listen %s: %+v", l[1], r)
		}
	}
	clients := [][]string{
		{"connect", "-proto", "tcp", "-addr", "10.14.1.2:14040"},
		{"connect", "-proto", "udp", "-addr", "10.14.1.2:14041", "-sendto"},
		{"connect", "-proto", "udp", "-addr", "10.14.1.2:14041"},
		{"connect", "-proto", "tcp", "-addr", "[fd14:1::2]:14042"},
		{"connect", "-proto", "udp", "-addr", "[fd14:1::2]:14043", "-sendto"},
		// A dual-stack AF_INET6 socket talking IPv4.
		{"connect", "-proto", "tcp", "-addr", "[::ffff:10.14.1.2]:14040"},
		{"connect", "-proto", "udp", "-addr", "[::ffff:10.14.1.2]:14041", "-sendto"},
	}
	for _, args := range clients {
		p := testenv.Start(t, cg, ctr.Command(append([]string{probe}, args...)...))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("container %v: %+v", args, r)
		}
		p.Wait(t, 5*time.Second)
	}
	// The container cannot undo its marks: changing them fails, and the
	// traffic after the attempt is still marked (counted below).
	for _, args := range [][]string{
		{"connect", "-proto", "udp", "-addr", "10.14.1.2:14041", "-mark", "0"},
		{"connect", "-proto", "udp", "-addr", "10.14.1.2:14041", "-tos", "0"},
		{"connect", "-proto", "udp", "-addr", "[fd14:1::2]:14043", "-tos", "0"},
	} {
		p := testenv.Start(t, cg, ctr.Command(append([]string{probe}, args...)...))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); r.Event != "setsockopt" || r.Errno != "EPERM" {
			t.Fatalf("container %v: %+v, want setsockopt EPERM", args, r)
		}
	}
	// A process outside the container's cgroup may (root in ctr).
	outside := testenv.Start(t, testenv.Cgroup(t, "marks-outside"), ctr.Command(probe, "connect", "-proto", "udp", "-addr", "10.14.1.2:14041", "-mark", "7", "-tos", "0"))
	if r := testenv.ParseProbe(t, outside.Line(t, 5*time.Second)); !r.OK {
		t.Fatalf("setsockopt outside the container: %+v", r)
	}
	// A server in the container: the accepted socket inherits the
	// listener's values, so its SYN-ACK and reply are marked too.
	srv := testenv.Start(t, cg, ctr.Command(probe, "listen", "-proto", "tcp", "-addr", "[::]:14044", "-name", "ctr"))
	if r := testenv.ParseProbe(t, srv.Line(t, 5*time.Second)); !r.OK {
		t.Fatalf("container listen: %+v", r)
	}
	for _, addr := range []string{"10.14.1.1:14044", "[fd14:1::1]:14044"} {
		p := testenv.Start(t, testenv.Cgroup(t, "marks-client"), net.Command(probe, "connect", "-proto", "tcp", "-addr", addr))
		if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); !r.OK || r.Reply != "ctr" {
			t.Fatalf("connect to the container at %s: %+v", addr, r)
		}
	}
	srv.Kill()
	time.Sleep(200 * time.Millisecond) // FINs of the closed sockets

	// Not marked: the sendto clients' first datagrams, two IPv4 (one
	// from a dual-stack socket) and one IPv6, the datagram of the
	// process outside the container that set its own mark and TOS, and
	// the IPv4 TIME_WAIT ACKs (priority 0; their DSCP is right) and
	// control-socket RSTs (priority 0, and the TOS of what they answer).
	outsideDatagrams := map[string]uint64{"4": 1}
	twAcks := nftCounter(t, ctr, "twack4")
	t.Logf("IPv4 TIME_WAIT ACKs leaving the container with the mark and priority 0: %d", twAcks)
	if twAcks > 3 {
		t.Errorf("%d IPv4 bare ACKs with the mark and priority 0, want at most 3 (one per IPv4 TCP connection)", twAcks)
	}
	outsideDatagrams["4"] += twAcks
	ctlRsts, rstsArriving := nftCounter(t, ctr, "ctlrst4"), nftCounter(t, net, "rst4")
	t.Logf("IPv4 control-socket RSTs leaving the container with the mark and priority 0: %d, arriving without the DSCP: %d", ctlRsts, rstsArriving)
	if ctlRsts > 3 || rstsArriving != ctlRsts {
		t.Errorf("%d IPv4 bare RSTs with the mark and priority 0, %d arriving without the DSCP, want the same number, at most 3 (one per IPv4 TCP connection)", ctlRsts, rstsArriving)
	}
	outsideDatagrams["4"] += ctlRsts
	firstDatagrams := map[string]uint64{"4": 2 + 1 + rstsArriving, "6": 1}
	for _, ns := range []struct {
		name   string
		ns     *testenv.NetNS
		exempt map[string]uint64
	}{{"leaving the container with mark and priority", ctr, outsideDatagrams}, {"arriving outside with the DSCP", net, firstDatagrams}} {
		for _, fam := range []string{"4", "6"} {
			all, marked := nftCounter(t, ns.ns, "all"+fam), nftCounter(t, ns.ns, "marked"+fam)
			t.Logf("IPv%s %s: %d of %d packets", fam, ns.name, marked, all)
			if all < 5 || marked != all-ns.exempt[fam] {
				t.Errorf("IPv%s %s: %d of %d TCP/UDP packets, want %d", fam, ns.name, marked, all, all-ns.exempt[fam])
			}
		}
	}

	// The same traffic is in the container's accounting.
	out, err := exec.Command(ctl, "stats", "--state-dir", dir, "--id", "marks", "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var list []stats.Attachment
	if err := json.Unmarshal(out, &list); err != nil || len(list) != 1 {
		t.Fatalf("stats: %v %s", err, out)
	}
	for _, c := range list[0].Traffic {
		if c.Protocol != "other" && c.Packets == 0 {
			t.Errorf("stats: no %s %s %s packets counted", c.Direction, c.Family, c.Protocol)
		}
	}
}
