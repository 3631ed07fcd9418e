package state_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestUpgradeMigratesChangedMapsAndHooks turns a state of this build into
// one of an imagined older layout: records in 260-byte heads and chunks,
// the limits map with other flags, a hook this layout has that the old
// one lacked, a hook the old one had that this one dropped, no layout
// record. Upgrade migrates the two record maps (decoding every record)
// and limits, attaches the new hook, removes the old one, swaps the
// namespace-keyed links too, and the policies are enforced after.
func TestUpgradeMigratesChangedMapsAndHooks(t *testing.T) {
	w := newWorld(t)
	ctr := w.attach(t, containerPolicy[:len(containerPolicy)-2]+`, "connectionLimits": {"total": 100},
	  "egress": [{"action": "allow", "cidr": "10.200.0.0/24", "ports": ["1-1000"]}, {"action": "deny", "cidr": "10.0.0.0/8"}]}`)
	parent := testenv.Cgroup(t, "upg-parent")
	podCg := testenv.ChildCgroup(t, parent, "pod")
	pod, err := w.attachNetNS(t, "pod", `{"allowedPorts": ["18000-18010"]}`, parent.Path)
	if err != nil {
		t.Fatal(err)
	}
	pin := func(m *ebpf.Map, name string) {
		t.Helper()
		tmp := filepath.Join(w.dir, "maps", "_"+name)
		if err := m.Pin(tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(w.dir, "maps", name)); err != nil {
			t.Fatal(err)
		}
	}
	open := func(name string) *ebpf.Map {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(w.dir, "maps", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}

	// Records of 256 data bytes a head and a chunk.
	const old = 256
	heads, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 128, ValueSize: 4 + old, MaxEntries: 1024, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer heads.Close()
	chunks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 132, ValueSize: 4 + old, MaxEntries: 1024, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer chunks.Close()
	records := open("attachments")
	key := make([]byte, 128)
	value := make([]byte, records.ValueSize())
	n := 0
	for it := records.Iterate(); it.Next(&key, &value); n++ {
		size := binary.NativeEndian.Uint32(value)
		data := value[4 : 4+size]
		for i := 0; len(data) > 0; i++ {
			part := make([]byte, 4+old)
			c := copy(part[4:], data)
			binary.NativeEndian.PutUint32(part, uint32(c))
			data = data[c:]
			if i == 0 {
				binary.NativeEndian.PutUint32(part, size)
				if err := heads.Put(key, part); err != nil {
					t.Fatal(err)
				}
				continue
			}
			ck := append(append([]byte(nil), key...), 0, 0, 0, 0)
			binary.NativeEndian.PutUint32(ck[128:], uint32(i))
			if err := chunks.Put(ck, part); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n != 2 {
		t.Fatalf("%d records, want 2", n)
	}
	pin(heads, "attachments")
	pin(chunks, "record_chunks")

	// limits with the other preallocation.
	limits := open("limits")
	info, _ := limits.Info()
	oldLimits, err := ebpf.NewMap(&ebpf.MapSpec{Type: limits.Type(), KeySize: limits.KeySize(), ValueSize: limits.ValueSize(), MaxEntries: limits.MaxEntries(), Flags: info.Flags ^ unix.BPF_F_NO_PREALLOC})
	if err != nil {
		t.Fatal(err)
	}
	defer oldLimits.Close()
	lk, lv := make([]byte, limits.KeySize()), make([]byte, limits.ValueSize())
	nLimits := 0
	for it := limits.Iterate(); it.Next(&lk, &lv); nLimits++ {
		if err := oldLimits.Put(lk, lv); err != nil {
			t.Fatal(err)
		}
	}
	if nLimits != 1 {
		t.Fatalf("%d limits entries, want 1", nLimits)
	}
	pin(oldLimits, "limits")

	// A hook the old layout lacked, one it had.
	folder := filepath.Join(w.dir, "cgroups", "ctr")
	l, err := link.LoadPinnedLink(filepath.Join(folder, "getpeername4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Detach()
	l.Unpin()
	l.Close()
	bind4, err := ebpf.LoadPinnedProgram(filepath.Join(w.dir, "progs", "bind4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err = link.AttachCgroup(link.CgroupOptions{Path: w.cg.Path, Attach: ebpf.AttachCGroupInet4Bind, Program: bind4})
	bind4.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(filepath.Join(folder, "obsolete_bind4")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	netnsBefore := linkPrograms(t, filepath.Join(w.dir, "netns", "links"))

	// Layout 1: no record, the program table under its old name.
	if err := os.Remove(filepath.Join(w.dir, "maps", "layout")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(w.dir, "maps", "program_table"), filepath.Join(w.dir, "maps", "cgroup_programs")); err != nil {
		t.Fatal(err)
	}

	r, err := state.Upgrade(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	for _, name := range []string{"attachments", "record_chunks", "limits"} {
		if !slices.Contains(r.Migrated, name) {
			t.Errorf("map %s not migrated: %+v", name, r)
		}
	}
	if slices.Contains(r.Migrated, "policies") || !slices.Contains(r.Reused, "policies") {
		t.Errorf("policies not reused: %+v", r)
	}
	if r.From != 1 || r.To != state.LayoutVersion || r.LinksAdded != 1 || r.LinksRemoved != 1 || r.Attachments != 1 {
		t.Errorf("report %+v: want 1 link added, 1 removed, 1 cgroup attachment", r)
	}

	s, err := state.Open(w.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, want := range []*state.Attachment{ctr, pod} {
		got, err := s.Get(want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("attachment after the upgrade:\n%+v\nwant\n%+v", got, want)
		}
		if err := s.VerifyLinks(got); err != nil {
			t.Error(err)
		}
	}
	if m := open("limits"); m.Flags() == oldLimits.Flags() {
		t.Errorf("limits keeps the old flags %d", m.Flags())
	} else if n := countEntries(t, m); n != 1 {
		t.Errorf("limits has %d entries after, want 1", n)
	}
	if open("attachments").ValueSize() == 4+old {
		t.Error("records keep the old size")
	}
	links, _ := filepath.Glob(filepath.Join(folder, "*"))
	var names []string
	for _, p := range links {
		names = append(names, filepath.Base(p))
	}
	if !slices.Contains(names, "getpeername4") || slices.Contains(names, "obsolete_bind4") {
		t.Errorf("links after the upgrade: %v", names)
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", w.cg.Path); strings.Count(out, " bind4") != 1 {
		t.Errorf("bind4 attached %d times:\n%s", strings.Count(out, " bind4"), out)
	}
	for name, id := range linkPrograms(t, filepath.Join(w.dir, "netns", "links")) {
		if id == netnsBefore[name] {
			t.Errorf("namespace link %s still runs program %d", name, id)
		}
	}
	if len(netnsBefore) == 0 {
		t.Error("no namespace links")
	}

	// Enforced by the new programs: the container's and the pod's binds.
	if r, ss := w.listen(t, w.cg, "tcp", "0.0.0.0:18001"); !r.OK {
		t.Fatalf("allowed bind: %+v", r)
	} else {
		expectListening(t, ss, "10.200.0.2:18001")
	}
	if r, _ := w.probeIn(t, w.cg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:18011"); r.Errno != "EPERM" {
		t.Errorf("bind outside allowedPorts: %+v, want EPERM", r)
	}
	if r, _ := w.probeIn(t, podCg, "listen", "-proto", "tcp", "-addr", "0.0.0.0:18011"); r.Errno != "EPERM" {
		t.Errorf("pod's bind outside allowedPorts: %+v, want EPERM", r)
	}
	s.Close()
	if r, err := state.Upgrade(w.dir); err != nil || !r.UpToDate {
		t.Errorf("second upgrade: %+v %v", r, err)
	}
	testenv.Detach(t, w.dir, "pod")
	testenv.Detach(t, w.dir, "ctr")
}

func linkPrograms(t *testing.T, dir string) map[string]ebpf.ProgramID {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "*"))
	out := map[string]ebpf.ProgramID{}
	for _, path := range paths {
		out[filepath.Base(path)] = testenv.LinkProgram(t, path)
	}
	return out
}

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var prev any
	for {
		key := make([]byte, m.KeySize())
		if err := m.NextKey(prev, &key); err != nil {
			return n
		}
		n++
		prev = key
	}
}

// From layout 2, which counted a pod's traffic with tcx links on the
// interfaces of its namespace (netns-traffic/): upgrade adds the namespace
// copy's cgroup_skb links to the namespace links, detaches the tcx links
// and removes the folder, and the pod is counted by the new links.
func TestUpgradeFromLayout2MovesPodCountersToTheNamespaceCopy(t *testing.T) {
	w := newWorld(t)
	parent := testenv.Cgroup(t, "upg2-parent")
	if _, err := w.attachNetNS(t, "pod", `{}`, parent.Path); err != nil {
		t.Fatal(err)
	}
	netnsLinksDir := filepath.Join(w.dir, "netns", "links")
	// Layout 2 had no accounting in the namespace copy.
	for _, name := range []string{"account_ingress", "account_egress"} {
		l, err := link.LoadPinnedLink(filepath.Join(netnsLinksDir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		l.Detach()
		l.Unpin()
		l.Close()
	}
	// Its tcx links, on lo of the pod's namespace.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	tcxDir := filepath.Join(w.dir, "netns-traffic", "links", "pod")
	if err := os.MkdirAll(tcxDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := prog.Pin(filepath.Join(w.dir, "netns-traffic", "progs")); err != nil {
		t.Fatal(err)
	}
	tcxOnLo := func() int {
		t.Helper()
		n := 0
		err := ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
			for _, way := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: 1, Attach: way})
				if err != nil {
					return err
				}
				n += len(res.Programs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	err = ns.WithNetNSPath(w.ns.Path, func(ns.NetNS) error {
		for _, way := range []struct {
			attach ebpf.AttachType
			name   string
		}{{ebpf.AttachTCXIngress, "1-ingress"}, {ebpf.AttachTCXEgress, "1-egress"}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: prog, Attach: way.attach})
			if err != nil {
				return err
			}
			err = l.Pin(filepath.Join(tcxDir, way.name))
			l.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := tcxOnLo(); n != 2 {
		t.Fatalf("%d tcx programs on lo before, want 2", n)
	}
	// The layout record says 2.
	layout, err := ebpf.LoadPinnedMap(filepath.Join(w.dir, "maps", "layout"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]byte, layout.ValueSize())
	binary.NativeEndian.PutUint32(v, 2)
	err = layout.Put(uint32(0), v)
	layout.Close()
	if err != nil {
		t.Fatal(err)
	}

	r, err := state.Upgrade(w.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if r.From != 2 || r.To != state.LayoutVersion || r.LinksAdded != 2 {
		t.Errorf("report %+v: want from 2, the two accounting links added", r)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "netns-traffic")); !os.IsNotExist(err) {
		t.Errorf("netns-traffic after the upgrade: %v", err)
	}
	if n := tcxOnLo(); n != 0 {
		t.Errorf("%d tcx programs on lo after the upgrade", n)
	}
	if out := testenv.Run(t, "bpftool", "cgroup", "show", parent.Path); strings.Count(out, "account_") != 2 {
		t.Errorf("bpftool cgroup show %s: want both accounting programs:\n%s", parent.Path, out)
	}
	s, err := state.Open(w.dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Get("pod")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyLinks(a); err != nil {
		t.Error(err)
	}
	s.Close()
	if r, err := state.Upgrade(w.dir); err != nil || !r.UpToDate {
		t.Errorf("second upgrade: %+v %v", r, err)
	}
}
