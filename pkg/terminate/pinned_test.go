package terminate_test

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// The termination programs are loaded with the state and pinned; every run
// shares their targets map. A run must act on its own targets only, even
// when a crashed run left targets behind, and leave the map empty.
func TestPinnedProgramsRunOnlyTheirTargets(t *testing.T) {
	w := newWorld(t)
	w.listen(t, cgroup.Cgroup{}, "A", w.a)
	w.listen(t, cgroup.Cgroup{}, "B", w.b)
	ctr := testenv.Cgroup(t, "term-pin")
	w.attach(t, "pin-ctr", ctr, `{}`, "")

	termDir := filepath.Join(w.dir, "terminate")
	entries, err := os.ReadDir(termDir)
	if err != nil {
		t.Fatalf("the state has no pinned termination programs: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if want := []string{"targets", "terminate_tcp", "terminate_udp"}; len(names) != 3 || names[0] != want[0] || names[1] != want[1] || names[2] != want[2] {
		t.Fatalf("%s holds %v, want %v", termDir, names, want)
	}

	toA := w.connect(t, "ctr->A", ctr, nil, "tcp", w.a, "A")
	toB := w.connect(t, "ctr->B", ctr, nil, "tcp", w.b, "B")

	// What a run that died before clearing would leave: B as a target.
	targets, err := ebpf.LoadPinnedMap(filepath.Join(termDir, "targets"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer targets.Close()
	stale := targetKey(w.b, w.port)
	if err := targets.Put(&stale, uint8(1)); err != nil {
		t.Fatal(err)
	}

	report, err := terminate.Backend(w.dir, netip.AddrPortFrom(w.a, w.port), "tcp", false)
	if err != nil {
		t.Fatal(err)
	}
	if report.Destroyed != 1 {
		t.Errorf("want only the client of A destroyed, got %+v", report)
	}
	toA.aborted(t)
	time.Sleep(300 * time.Millisecond)
	toB.alive(t)

	var (
		key bpfobj.TerminateTermTarget
		val uint8
	)
	if iter := targets.Iterate(); iter.Next(&key, &val) {
		t.Errorf("targets map not empty after a run: %+v", key)
	}
}

// targetKey is the targets map key of a TCP backend (bpf/terminate.c):
// IPv4-mapped address and port in network byte order.
func targetKey(addr netip.Addr, port uint16) bpfobj.TerminateTermTarget {
	var key bpfobj.TerminateTermTarget
	a := addr.As16()
	for i := range key.Addr {
		key.Addr[i] = binary.NativeEndian.Uint32(a[4*i:])
	}
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], port)
	key.Port = binary.NativeEndian.Uint16(p[:])
	key.Protocol = 6
	return key
}
