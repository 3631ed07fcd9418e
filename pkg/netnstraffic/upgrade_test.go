package netnstraffic_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/netnstraffic"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// portcullisctl upgrade gives the pods the counters of this layout: a pod
// attached before they existed (layout 1: no links) gets its links, and a
// pod with links keeps them, now running programs loaded again against
// the upgraded state's maps.
func TestUpgradeGivesPodsTheirCounters(t *testing.T) {
	dir := testenv.StateDir(t)
	parent := testenv.Cgroup(t, "netnstraffic-upgrade")
	a, b := testenv.NewNetNS(t), testenv.NewNetNS(t)
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	for id, ns := range map[string]*testenv.NetNS{"a": a, "b": b} {
		if _, err := s.Attach(state.AttachRequest{ID: id, Policy: &policy.Policy{}, NetNS: ns.Path, KeyByNetNS: true, NetNSCgroup: parent.Path}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	progID := func() ebpf.ProgramID {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(netnstraffic.Dir(dir), "progs", "netns_traffic_ingress"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		info, _ := p.Info()
		id, _ := info.ID()
		return id
	}
	before := progID()
	// Pod a as layout 1 left it: no counters. The state: layout 1.
	if err := netnstraffic.Detach(dir, "a"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "maps", "layout")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "maps", "program_table"), filepath.Join(dir, "maps", "cgroup_programs")); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Upgrade(dir); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*testenv.NetNS{a, b} {
		// lo, each way (the namespaces have no other interface).
		if n, err := netnstraffic.Attached(dir, ns.Path); err != nil || n != 2 {
			t.Errorf("counting programs attached in %s after the upgrade: %d, %v; want 2", ns.Name, n, err)
		}
	}
	if progID() == before {
		t.Error("the counting programs were not loaded again")
	}
}
