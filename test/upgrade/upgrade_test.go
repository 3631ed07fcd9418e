package upgrade

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// releases are the previous releases' portcullisctl in test/testdata and
// their layouts: each is upgraded to this build's (docs/upgrade.md).
var releases = []struct {
	file   string
	layout int
	// refused is what that release's tools say of a state of this layout.
	refused string
}{
	{"portcullisctl-layout1.gz", 1, "state from another version"},
	{"portcullisctl-layout2.gz", 2, "newer than this build's 2"},
	{"portcullisctl-layout3.gz", 3, "newer than this build's 3"},
	{"portcullisctl-layout4.gz", 4, "newer than this build's 4"},
}

// The upgrade under load: a real state of each previous layout, traffic
// through a frontend and binds tried during an upgrade that fails half way
// (a test hook) and is resumed, then run once more (a no-op). Nothing
// fails, nothing escapes the policy, every attachment keeps its policy and
// map entries, each hook always has one program, and tools of the other
// layout refuse the state in one line.
func TestUpgradeUnderLoad(t *testing.T) {
	for _, r := range releases {
		t.Run(fmt.Sprintf("from-layout-%d", r.layout), func(t *testing.T) {
			upgradeUnderLoad(t, FromRelease(t, r.file), r.layout, r.refused)
		})
	}
}

func upgradeUnderLoad(t *testing.T, e *Env, from int, refused string) {
	// The hooks of the old layout.
	hooks := len(e.LinkPrograms(t)) / len(e.Groups)
	before := e.Take(t, e.V1)
	oldLinks := e.LinkPrograms(t)

	// This build refuses the old state, every front end alike.
	want := fmt.Sprintf("has layout %d, this build needs %d: run `portcullisctl upgrade`", from, state.LayoutVersion)
	if out, err := e.Try(e.V2, nil, "status"); err == nil || !strings.Contains(out, want) {
		t.Fatalf("status of a layout-1 state: %v\n%s", err, out)
	}
	refusedByFrontEnds(t, e, want)

	e.StartLoad(t)
	time.Sleep(200 * time.Millisecond)

	// Half way: the failure leaves some links of the first container on
	// new programs, the rest on old ones; every tool refuses the state
	// meanwhile.
	const failAfter = 3
	out, err := e.Try(e.V2, []string{"PORTCULLIS_TEST_UPGRADE_FAIL_AFTER=" + fmt.Sprint(failAfter)}, "upgrade")
	if err == nil || !strings.Contains(out, "failure injected") || !strings.Contains(out, "run portcullisctl upgrade again") {
		t.Fatalf("upgrade with a failure injected: %v\n%s", err, out)
	}
	e.Enforced(t, hooks)
	mid := e.LinkPrograms(t)
	changed := 0
	for path, id := range mid {
		if id != oldLinks[path] {
			changed++
		}
	}
	if changed != failAfter {
		t.Errorf("%d links changed program before the injected failure, want %d", changed, failAfter)
	}
	if out, err := e.Try(e.V2, nil, "status"); err == nil || !strings.Contains(out, "half way through an upgrade") {
		t.Errorf("status half way: %v\n%s", err, out)
	}
	if out, err := e.Try(e.V1, nil, "status"); err == nil {
		t.Errorf("the layout-1 tool half way: %v\n%s", err, out)
	}
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	out = e.Run(t, e.V2, "upgrade")
	t.Logf("resumed upgrade from layout %d in %v: %s", from, time.Since(start), out)
	if !strings.Contains(out, "finished the upgrade") {
		t.Errorf("the second run did not resume: %s", out)
	}
	e.Enforced(t, 1) // this layout may have other hooks
	time.Sleep(200 * time.Millisecond)
	if out := e.Run(t, e.V2, "upgrade"); !strings.Contains(out, fmt.Sprintf("already has layout %d", state.LayoutVersion)) {
		t.Errorf("a third run: %s", out)
	}
	counts := e.StopLoad(t)
	for i, c := range counts {
		what := []string{"client", "binder"}[i]
		t.Logf("%s: %+v", what, c)
		if c.Failed != 0 || c.Escaped != 0 || c.OK == 0 || c.Rounds < 3 {
			t.Errorf("%s during the upgrade: %d rounds, %d ok, %d failed, %d escaped: %v", what, c.Rounds, c.OK, c.Failed, c.Escaped, c.Errors)
		}
	}

	// No connection of the client is counted twice or lost across the
	// swap: with the load stopped, its caps count nothing.
	if n := e.LiveConnections(t); n != 0 {
		t.Errorf("%d connections still counted against the caps after the load stopped", n)
	}
	after := e.Take(t, e.V2)
	Same(t, before, after)
	newLinks := e.LinkPrograms(t)
	for path, id := range newLinks {
		if id == oldLinks[path] {
			t.Errorf("link %s still runs the old program %d", path, id)
		}
	}
	// None of the three policies marks sockets: each links the unmarked
	// sock_create, as a new attachment would.
	unmarked := testenv.PinnedProgram(t, filepath.Join(e.Dir, "progs", "sock_create_unmarked"))
	for name := range e.Groups {
		if id := newLinks[filepath.Join("cgroups", name, "sock_create")]; id != unmarked {
			t.Errorf("attachment %s: sock_create runs program %d, want sock_create_unmarked (%d)", name, id, unmarked)
		}
	}
	s, err := state.Open(e.Dir, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range after.Attachments {
		if err := s.VerifyLinks(&after.Attachments[i]); err != nil {
			t.Error(err)
		}
	}
	l, err := state.ReadLayout(e.Dir)
	s.Close()
	if err != nil || l.Version != state.LayoutVersion || l.Upgrading {
		t.Errorf("layout after: %+v %v", l, err)
	}
	// The layout-1 tool refuses the new state instead of misreading it.
	if out, err := e.Try(e.V1, nil, "status"); err == nil || !strings.Contains(out, refused) {
		t.Errorf("the layout-1 tool on the upgraded state: %v\n%s", err, out)
	}
	// The new build works on it: detach and attach again.
	e.Run(t, e.V2, "detach", "--id", "bnd")
	doc := filepath.Join(t.TempDir(), "bnd.json")
	os.WriteFile(doc, []byte(policies["bnd"]), 0o644)
	e.Run(t, e.V2, "attach", "--id", "bnd", "--cgroup", e.Groups["bnd"].Path, "--policy", doc, "--netns", e.NS.Path)
	e.Enforced(t, 1)
	// The upgraded containers have the hooks of a fresh attach.
	fresh, _ := filepath.Glob(filepath.Join(e.Dir, "cgroups", "bnd", "*"))
	for _, name := range []string{"srv", "cli"} {
		if got, _ := filepath.Glob(filepath.Join(e.Dir, "cgroups", name, "*")); len(got) != len(fresh) {
			t.Errorf("container %s has %d links after the upgrade, a fresh attach %d", name, len(got), len(fresh))
		}
	}
}

// refusedByFrontEnds checks that the CNI plugin (DEL) and the OCI hook
// (poststop) refuse the state with want in their error.
func refusedByFrontEnds(t *testing.T, e *Env, want string) {
	t.Helper()
	plugin := testenv.Binary(t, "./plugins/portcullis")
	cmd := exec.Command(plugin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=DEL", "CNI_CONTAINERID=upgrade-test", "CNI_IFNAME=eth0", "CNI_NETNS="+e.NS.Path, "CNI_PATH=/usr/lib/cni")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "upgrade", "type": "portcullis", "stateDir": %q}`, e.Dir))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), want) {
		t.Errorf("CNI DEL on a layout-1 state: %v\n%s", err, out)
	}
	hook := testenv.Binary(t, "./hooks/portcullis-hook")
	cmd = exec.Command(hook, "poststop")
	cmd.Env = append(os.Environ(), "PORTCULLIS_STATE_DIR="+e.Dir)
	cmd.Stdin = strings.NewReader(`{"ociVersion": "1.0.2", "id": "upgrade-test", "status": "stopped", "bundle": "/nonexistent"}`)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), want) {
		t.Errorf("hook poststop on a layout-1 state: %v\n%s", err, out)
	}
}
