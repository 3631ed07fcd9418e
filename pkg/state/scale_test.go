package state_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// scaleAttachments is how many containers one host is meant to hold.
const scaleAttachments = 10_000

// One host, 10,000 attached cgroups: a sample of them is enforced (a bind
// outside the allowed ports fails with EPERM, one inside succeeds), and
// detaching them all leaves nothing: no record, no map entry, no link
// folder, no program on any of the cgroups.
func TestTenThousandAttachments(t *testing.T) {
	dir := testenv.StateDir(t)
	ns := testenv.NewNetNS(t)
	ns.IP(t, "link", "set", "lo", "up")
	probe := testenv.Binary(t, "./test/sockprobe")
	parent := testenv.Cgroup(t, "scale")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	start := time.Now()
	cgs := testenv.AttachMany(t, s, parent, "scale", scaleAttachments, mustParse(t, `{"allowedPorts":["11100-11110"]}`))
	t.Logf("attached %d cgroups in %v", len(cgs), time.Since(start))
	if usage, err := s.MapMemory(); err == nil {
		var total uint64
		for _, m := range usage {
			total += m.Memlock
		}
		t.Logf("map memory with %d attachments: %.1f MiB", scaleAttachments, float64(total)/(1<<20))
	}

	for _, name := range []string{"policies", "attachments", "attachment_keys"} {
		if n := entries(t, dir, name); n != scaleAttachments {
			t.Errorf("map %s has %d entries, want %d", name, n, scaleAttachments)
		}
	}
	for _, i := range []int{0, 1, 4_999, 7_777, scaleAttachments - 1} {
		cg := cgs[i]
		if got, err := s.AttachmentOfCgroup(cg.ID); err != nil || got != fmt.Sprintf("scale-%d", i) {
			t.Errorf("cgroup %d: attachment %q, %v", i, got, err)
		}
		for port, want := range map[int]string{11105: "", 11150: "EPERM"} {
			p := testenv.Start(t, cg, ns.Command(probe, "listen", "-proto", "tcp", "-addr", fmt.Sprintf("127.0.0.1:%d", port)))
			r := testenv.ParseProbe(t, p.Line(t, 5*time.Second))
			p.Kill()
			if r.Errno != want || (want == "" && !r.OK) {
				t.Errorf("cgroup %d of %d: bind :%d = %+v, want errno %q", i, scaleAttachments, port, r, want)
			}
		}
	}

	start = time.Now()
	for i := range cgs {
		if err := s.Detach(fmt.Sprintf("scale-%d", i)); err != nil {
			t.Fatalf("detach %d: %v", i, err)
		}
	}
	t.Logf("detached %d cgroups in %v", len(cgs), time.Since(start))

	if list, err := s.Attachments(); err != nil || len(list) != 0 {
		t.Errorf("after detaching all: %d attachments left (%v)", len(list), err)
	}
	for _, name := range []string{"policies", "portmaps", "attachments", "attachment_keys", "svc_registry", "svc_listeners"} {
		if n := entries(t, dir, name); n != 0 {
			t.Errorf("map %s has %d entries left", name, n)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "cgroups")); len(left) != 0 {
		t.Errorf("%d link folders left, first %s", len(left), left[0].Name())
	}
	for i, cg := range cgs {
		if progs := attachedPrograms(t, cg); progs != 0 {
			t.Fatalf("cgroup %d still has %d programs attached", i, progs)
		}
	}
	// The cgroups themselves go with the parent's cleanup; check they
	// can go now.
	testenv.RemoveCgroup(t, parent.Path)
	if _, err := os.Stat(parent.Path); !os.IsNotExist(err) {
		t.Errorf("cgroup %s is left: %v", parent.Path, err)
	}
}

// entries counts the entries of a pinned hash map.
func entries(t *testing.T, dir, name string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	n := 0
	iter := m.Iterate()
	for iter.Next(&key, &val) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("map %s: %v", name, err)
	}
	return n
}

// attachedPrograms counts the programs attached to a cgroup, over every
// attach type portcullis uses.
func attachedPrograms(t *testing.T, cg cgroup.Cgroup) int {
	t.Helper()
	f, err := os.Open(cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, at := range testenv.CgroupAttachTypes {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %s programs of %s: %v", at, cg.Path, err)
		}
		n += len(r.Programs)
	}
	return n
}
