package stats_test

import (
	"net/netip"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// decisionsOf returns every reason's count for the attachment id.
func decisionsOf(t *testing.T, dir, id string) map[string]uint64 {
	t.Helper()
	a, ok := read(t, dir)[id]
	if !ok {
		t.Fatalf("no counters for %s", id)
	}
	return a.Decisions
}

// expect checks every reason of id against want.
func expect(t *testing.T, dir, id, step string, want map[string]uint64) {
	t.Helper()
	got := decisionsOf(t, dir, id)
	for _, r := range stats.Reasons() {
		if got[r.String()] != want[r.String()] {
			t.Errorf("%s after %s: %s = %d, want %d", id, step, r, got[r.String()], want[r.String()])
		}
	}
}

// Terminating K client sockets, by a removed backend (bpf/terminate.c) or
// by egress rules that now deny them (bpf/egress_terminate.c), adds
// exactly K to socket_terminated of the container they belong to; a dry
// run adds nothing, and another container's counters do not move.
func TestTerminatedSocketsCountExactlyK(t *testing.T) {
	const k = 3
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "stats-term")
	other := testenv.Cgroup(t, "stats-term-other")
	testenv.Attach(t, dir, "term", cg.Path, `{"addresses": ["127.0.0.1"]}`, "")
	testenv.Attach(t, dir, "other", other.Path, `{"addresses": ["127.0.0.1"]}`, "")
	guardtest.Listen(t, "127.0.0.1:14082")
	guardtest.Listen(t, "127.0.0.1:14083")

	mine := guardtest.Start(t, cg, nil)
	theirs := guardtest.Start(t, other, nil)
	var held []int
	for range k {
		held = append(held, mine.Connect(t, "tcp", "127.0.0.1:14082", ""))
	}
	// The other container's client of another backend, and a client of
	// the same container to that other backend: neither is a target.
	kept := theirs.Connect(t, "tcp", "127.0.0.1:14083", "")
	keptMine := mine.Connect(t, "tcp", "127.0.0.1:14083", "")

	zero := map[string]uint64{}
	backend := netip.MustParseAddrPort("127.0.0.1:14082")
	report, err := terminate.Backend(dir, backend, "tcp", true)
	if err != nil || report.Matched != k || report.Destroyed != 0 {
		t.Fatalf("dry run: %+v, %v; want %d matched, none destroyed", report, err, k)
	}
	expect(t, dir, "term", "a dry run", zero)

	report, err = terminate.Backend(dir, backend, "tcp", false)
	if err != nil || report.Destroyed != k {
		t.Fatalf("terminate: %+v, %v; want %d destroyed", report, err, k)
	}
	for _, id := range held {
		mine.Aborted(t, id)
	}
	mine.Alive(t, keptMine)
	theirs.Alive(t, kept)
	want := map[string]uint64{stats.SocketTerminated.String(): k}
	expect(t, dir, "term", "terminating a backend", want)
	expect(t, dir, "other", "terminating another container's clients", zero)

	// Nothing left to destroy: nothing more counted.
	if report, err := terminate.Backend(dir, backend, "tcp", false); err != nil || report.Destroyed != 0 {
		t.Fatalf("second terminate: %+v, %v", report, err)
	}
	expect(t, dir, "term", "a terminate that found nothing", want)

	// Egress rules that now deny 127.0.0.1:14083: the container's one
	// client there is destroyed and counted once more.
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	deny, err := policy.Parse([]byte(`{"addresses": ["127.0.0.1"], "egress": [{"action": "deny", "cidr": "127.0.0.1/32", "ports": ["14083"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.SetPolicy("term", deny)
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	if report, err := terminate.Denied(s, a, true); err != nil || report.Matched != 1 {
		s.Close()
		t.Fatalf("egress dry run: %+v, %v; want 1 matched", report, err)
	}
	s.Close()
	expect(t, dir, "term", "an egress dry run", want)
	s, err = state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if report, err := terminate.Denied(s, a, false); err != nil || report.Destroyed != 1 {
		s.Close()
		t.Fatalf("egress terminate: %+v, %v; want 1 destroyed", report, err)
	}
	s.Close()
	mine.Aborted(t, keptMine)
	theirs.Alive(t, kept)
	want[stats.SocketTerminated.String()]++
	expect(t, dir, "term", "terminating what egress rules deny", want)
	expect(t, dir, "other", "terminating another container's clients", zero)
}

// A pod keyed by its network namespace (its sockets are in a cgroup
// without a policy): the backend iterators find its clients by the
// attachment sock_create recorded for them, destroy them and count them
// under the pod.
func TestTerminatedPodSocketsCountExactlyK(t *testing.T) {
	const k = 2
	dir := testenv.StateDir(t)
	pod := testenv.NewNetNS(t)
	parent := testenv.Cgroup(t, "stats-term-pods")
	task := testenv.ChildCgroup(t, parent, "app")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Attach(state.AttachRequest{ID: "pod", Policy: &policy.Policy{}, NetNS: pod.Path, KeyByNetNS: true, NetNSCgroup: parent.Path})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "ip", "-n", pod.Name, "link", "set", "lo", "up")
	listener := testenv.Start(t, task, pod.Command(testenv.Binary(t, "./test/sockprobe"), "listen", "-addr", "127.0.0.1:14084"))
	if r := testenv.ParseProbe(t, listener.Line(t, 5e9)); !r.OK {
		t.Fatalf("listen in the pod: %+v", r)
	}
	probe := guardtest.Start(t, task, pod.Command)
	var held []int
	for range k {
		held = append(held, probe.Connect(t, "tcp", "127.0.0.1:14084", ""))
	}
	report, err := terminate.Backend(dir, netip.MustParseAddrPort("127.0.0.1:14084"), "tcp", false)
	if err != nil || report.Destroyed != k {
		t.Fatalf("terminate: %+v, %v; want %d destroyed", report, err, k)
	}
	for _, id := range held {
		probe.Aborted(t, id)
	}
	expect(t, dir, "pod", "terminating the pod's clients", map[string]uint64{stats.SocketTerminated.String(): k})
}
