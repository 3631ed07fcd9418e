package state_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// attachNetNS keys containerPolicy by the world's network namespace, with
// the namespace programs on parent ("" is the cgroup v2 root).
func (w *world) attachNetNS(t *testing.T, id, doc, parent string) (*state.Attachment, error) {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.OpenOrLoad(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Attach(state.AttachRequest{ID: id, Policy: p, NetNS: w.ns.Path, KeyByNetNS: true, NetNSCgroup: parent})
}

func netnsLinks(t *testing.T, dir string) []string {
	t.Helper()
	links, _ := filepath.Glob(filepath.Join(dir, "netns", "links", "*"))
	return links
}

// TestNetNSKeyedPolicyCoversEveryCgroup: a policy keyed by a network
// namespace applies to every task in it, in any cgroup (one created after
// the attach included), and to no task outside it; with the last such
// policy gone the programs leave the common ancestor.
func TestNetNSKeyedPolicyCoversEveryCgroup(t *testing.T) {
	w := newWorld(t)
	a, err := w.attachNetNS(t, "pod", containerPolicy, "")
	if err != nil {
		t.Fatal(err)
	}
	if !a.KeyedByNetNS() || a.CgroupPath != "" {
		t.Fatalf("attachment %+v, want one keyed by network namespace", a)
	}
	if len(netnsLinks(t, w.dir)) == 0 {
		t.Fatal("no namespace links pinned after the attach")
	}
	mount, _ := cgroup.Mount()
	if out := testenv.Run(t, "bpftool", "cgroup", "show", mount); !strings.Contains(out, "bind4") {
		t.Fatalf("bpftool cgroup show %s has no bind4 program:\n%s", mount, out)
	}
	later := testenv.Cgroup(t, "pod-later")
	nested := testenv.ChildCgroup(t, later, "nested")
	for name, cg := range map[string]cgroup.Cgroup{"test's own cgroup": {}, "a later cgroup": later, "a nested cgroup": nested} {
		t.Run(name, func(t *testing.T) {
			r, ss := w.listen(t, cg, "tcp", "0.0.0.0:18001")
			if !r.OK {
				t.Fatalf("bind: %+v", r)
			}
			expectListening(t, ss, "10.200.0.2:18001")
			if r, _ := w.probeIn(t, cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:18011"); r.Errno != "EPERM" {
				t.Fatalf("bind outside allowedPorts: %+v, want EPERM", r)
			}
		})
	}
	// A task of the host namespace in the same cgroup is not covered.
	host := testenv.Start(t, later, exec.Command(w.probe, "listen", "-proto", "tcp", "-addr", "127.0.0.1:0"))
	if r := testenv.ParseProbe(t, host.Line(t, 5e9)); !r.OK {
		t.Fatalf("host task's bind: %+v", r)
	}
	testenv.Detach(t, w.dir, "pod")
	if links := netnsLinks(t, w.dir); len(links) != 0 {
		t.Fatalf("namespace links left after the last detach: %v", links)
	}
	if r, _ := w.probeIn(t, later, "listen", "-proto", "tcp", "-addr", "0.0.0.0:18011"); !r.OK || r.Local != "0.0.0.0:18011" {
		t.Fatalf("bind after detach: %+v, want it free", r)
	}
}

// TestNetNSAndCgroupPolicyActOnce: a task in a namespace with a policy and
// in a cgroup with another runs both copies of the programs; only the
// cgroup's policy acts, so nothing is applied twice or mixed.
func TestNetNSAndCgroupPolicyActOnce(t *testing.T) {
	w := newWorld(t)
	// The cgroup first: the address check of an attach runs in the
	// namespace, where the namespace's policy would apply to it.
	w.attach(t, containerPolicy)
	if _, err := w.attachNetNS(t, "pod", `{"addresses": ["10.200.0.3"], "allowedPorts": ["18020"]}`, ""); err != nil {
		t.Fatal(err)
	}
	r, ss := w.listen(t, w.cg, "tcp", "0.0.0.0:80")
	if !r.OK || r.Local != "10.200.0.2:80" {
		t.Fatalf("bind :80 in the cgroup: %+v, want the cgroup policy's mapping", r)
	}
	expectListening(t, ss, "10.200.0.2:18080")
	if r, _ := w.probeIn(t, w.cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:18020"); r.Errno != "EPERM" {
		t.Fatalf("bind of the namespace policy's port in the cgroup: %+v, want EPERM", r)
	}
	other := testenv.Cgroup(t, "pod-other")
	r, ss = w.listen(t, other, "tcp", "0.0.0.0:18020")
	if !r.OK {
		t.Fatalf("bind in another cgroup: %+v", r)
	}
	expectListening(t, ss, "10.200.0.3:18020")
}

// TestNetNSAttachRefusals: a second namespace attachment of the same
// namespace, a different common ancestor and a missing namespace are
// refused and leave nothing behind.
func TestNetNSAttachRefusals(t *testing.T) {
	w := newWorld(t)
	parent := testenv.Cgroup(t, "pods")
	if _, err := w.attachNetNS(t, "pod", containerPolicy, parent.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := w.attachNetNS(t, "pod2", containerPolicy, parent.Path); err == nil || !strings.Contains(err.Error(), "network namespace "+w.ns.Path+` is already attached as "pod"`) {
		t.Fatalf("second attach of the namespace: %v", err)
	}
	other := newWorld(t)
	other.dir = w.dir
	if _, err := other.attachNetNS(t, "pod3", `{}`, ""); err == nil || !strings.Contains(err.Error(), "attached to another cgroup than") {
		t.Fatalf("attach with another common ancestor: %v", err)
	}
	gone := filepath.Join(t.TempDir(), "nonexistent")
	other.ns = &testenv.NetNS{Path: gone}
	if _, err := other.attachNetNS(t, "pod4", `{}`, parent.Path); err == nil || !strings.Contains(err.Error(), "network namespace "+gone) {
		t.Fatalf("attach of a missing namespace: %v", err)
	}
	s, err := state.Open(w.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	list, _ := s.Attachments()
	s.Close()
	if len(list) != 1 {
		t.Fatalf("attachments %+v, want only pod", list)
	}
	// The programs are on the given parent: a task below it is covered.
	r, ss := w.listen(t, testenv.ChildCgroup(t, parent, "ctr"), "tcp", "0.0.0.0:18001")
	if !r.OK {
		t.Fatalf("bind below the parent: %+v", r)
	}
	expectListening(t, ss, "10.200.0.2:18001")
	testenv.Detach(t, w.dir, "pod")
	if _, err := os.Stat(filepath.Join(w.dir, "netns", "links")); !os.IsNotExist(err) {
		t.Fatalf("namespace links folder after the last detach: %v", err)
	}
}

// A state whose namespace links were made before the namespace copy had
// its cgroup_skb programs (accounting) gets them with the next
// namespace-keyed attach, next to the links it has, and the links verify.
func TestNetNSLinksCompletedForOlderState(t *testing.T) {
	w := newWorld(t)
	parent := testenv.Cgroup(t, "pods-older")
	if _, err := w.attachNetNS(t, "pod", containerPolicy, parent.Path); err != nil {
		t.Fatal(err)
	}
	names := func() []string {
		var out []string
		for _, l := range netnsLinks(t, w.dir) {
			out = append(out, filepath.Base(l))
		}
		return out
	}
	before := names()
	// What an older state has: no accounting links.
	for _, name := range []string{"account_ingress", "account_egress"} {
		path := filepath.Join(w.dir, "netns", "links", name)
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("namespace links %v: no %s", before, name)
		}
		testenv.Run(t, "bpftool", "link", "detach", "pinned", path)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", parent.Path); strings.Contains(out, "account_") {
		t.Fatalf("accounting still attached to %s:\n%s", parent.Path, out)
	}
	other := testenv.NewNetNS(t)
	s, err := state.Open(w.dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "pod2", Policy: &policy.Policy{}, NetNS: other.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
		t.Fatal(err)
	}
	if after := names(); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("namespace links %v after the attach, want %v", after, before)
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", parent.Path); strings.Count(out, "account_") != 2 {
		t.Fatalf("bpftool cgroup show %s: want both accounting programs once:\n%s", parent.Path, out)
	}
	for _, id := range []string{"pod", "pod2"} {
		a, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyLinks(a); err != nil {
			t.Fatalf("verify %s: %v", id, err)
		}
	}
}
