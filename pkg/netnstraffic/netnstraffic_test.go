package netnstraffic_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/netnstraffic"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func inNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func links(t *testing.T, dir, id string) []string {
	t.Helper()
	entries, err := os.ReadDir(netnstraffic.LinkDir(dir, id))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// The links follow namespace-keyed attachments only: made at attach on
// every interface of the namespace, removed at detach, also after the
// namespace is gone; a cgroup-keyed attachment gets none. Counting starts
// at once (a datagram over the veth between two attached namespaces).
func TestLinksFollowNamespaceAttachments(t *testing.T) {
	dir := testenv.StateDir(t)
	parent := testenv.Cgroup(t, "netnstraffic")
	a, b := testenv.NewNetNS(t), testenv.NewNetNS(t)
	vethA, vethB := "pcnt"+testenv.Suffix()[:6], "pcnt"+testenv.Suffix()[:6]
	testenv.Run(t, "ip", "link", "add", vethA, "netns", a.Name, "type", "veth", "peer", "name", vethB, "netns", b.Name)
	a.IP(t, "addr", "add", "10.213.77.1/24", "dev", vethA)
	b.IP(t, "addr", "add", "10.213.77.2/24", "dev", vethB)
	a.IP(t, "link", "set", vethA, "up")
	b.IP(t, "link", "set", vethB, "up")

	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	attach := func(id string, ns *testenv.NetNS) time.Duration {
		t.Helper()
		start := time.Now()
		if _, err := s.Attach(state.AttachRequest{ID: id, Policy: &policy.Policy{}, NetNS: ns.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	attach("a", a)
	took := attach("b", b) // the programs are pinned by now
	t.Logf("attach with the programs pinned: %v", took)
	for _, id := range []string{"a", "b"} {
		if got := links(t, dir, id); len(got) != 4 {
			t.Fatalf("links of %s: %v, want lo and the veth, each way", id, got)
		}
	}
	cg := testenv.Cgroup(t, "netnstraffic-cgroup")
	if _, err := s.Attach(state.AttachRequest{ID: "cg", Cgroup: cg.Path, Policy: &policy.Policy{}}); err != nil {
		t.Fatal(err)
	}
	if got := links(t, dir, "cg"); len(got) != 0 {
		t.Fatalf("a cgroup-keyed attachment has links: %v", got)
	}
	if n, err := netnstraffic.Attached(dir, a.Path); err != nil || n != 4 {
		t.Fatalf("programs attached in a: %d, %v; want 4", n, err)
	}
	start := time.Now()
	if err := netnstraffic.Detach(dir, "b"); err != nil {
		t.Fatal(err)
	}
	detached := time.Since(start)
	b0, _ := s.Get("b")
	start = time.Now()
	if err := netnstraffic.Attach(dir, b0); err != nil {
		t.Fatal(err)
	}
	t.Logf("the hook alone: attach %v, detach %v", time.Since(start), detached)

	// One datagram of 100 bytes from a to b: 128 bytes of IPv4.
	var rcv net.PacketConn
	inNS(t, b.Path, func() (err error) {
		rcv, err = net.ListenPacket("udp", "10.213.77.2:0")
		return err
	})
	defer rcv.Close()
	inNS(t, a.Path, func() error {
		c, err := net.Dial("udp", rcv.LocalAddr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(make([]byte, 100))
		return err
	})
	rcv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := rcv.ReadFrom(make([]byte, 200)); err != nil {
		t.Fatal(err)
	}
	m, err := stats.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for id, want := range map[string]stats.Counter{
		"a": {Direction: "egress", Family: "ipv4", Protocol: "udp", Packets: 1, Bytes: 128},
		"b": {Direction: "ingress", Family: "ipv4", Protocol: "udp", Packets: 1, Bytes: 128},
	} {
		att, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := m.Of(att)
		if err != nil {
			t.Fatal(err)
		}
		for _, cell := range c.Traffic {
			if cell.Direction == want.Direction && cell.Family == want.Family && cell.Protocol == want.Protocol && cell != want {
				t.Errorf("%s: %+v, want %+v", id, cell, want)
			}
		}
	}

	if err := s.Detach("a"); err != nil {
		t.Fatal(err)
	}
	if got := links(t, dir, "a"); len(got) != 0 {
		t.Fatalf("links of a after detach: %v", got)
	}
	// The kernel releases unpinned links from a worker (Detach).
	if n, err := attachedAfterRelease(dir, a.Path); err != nil || n != 0 {
		t.Fatalf("programs attached in a after detach: %d, %v", n, err)
	}
	// b's namespace goes first (a CNI DEL after the runtime removed it).
	testenv.Run(t, "ip", "netns", "del", b.Name)
	if err := s.Detach("b"); err != nil {
		t.Fatalf("detach after the namespace is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(netnstraffic.Dir(dir), "links", "b")); !os.IsNotExist(err) {
		t.Fatalf("links of b after detach: %v", err)
	}
}

// attachedAfterRelease is netnstraffic.Attached once the kernel has had
// time to release detached links (up to 2 s).
func attachedAfterRelease(dir, netnsPath string) (int, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := netnstraffic.Attached(dir, netnsPath)
		if err != nil || n == 0 || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
