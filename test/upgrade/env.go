// Package upgrade builds, for the upgrade test and benchmark, a real
// state of the previous layout, loaded by the previous release's
// portcullisctl (test/testdata/portcullisctl-layout1.gz), with containers
// under load.
package upgrade

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Env is one test's layout-1 state with three containers in a network
// namespace: a server providing service "web" (frontend 10.201.0.100:80)
// on a mapped port, a client with egress rules and connection caps, and a
// container whose binds are pinned.
type Env struct {
	Dir    string
	V1     string // the older release's portcullisctl
	V2     string // this build's
	NS     *testenv.NetNS
	Groups map[string]cgroup.Cgroup
	probe  string
	stop   string
	loads  []*testenv.Proc
}

var policies = map[string]string{
	"srv": `{"addresses": ["10.201.0.2"], "allowedPorts": ["8080"],
	         "portMappings": [{"containerPort": 8080, "hostPort": 18080, "protocol": "tcp"}],
	         "provides": [{"service": "web", "port": 8080, "protocol": "tcp"}]}`,
	"cli": `{"addresses": ["10.201.0.3"],
	         "connectionLimits": {"perDestination": 500, "total": 1000},
	         "egress": [{"action": "deny", "cidr": "10.201.0.1/32"},
	                    {"action": "allow", "cidr": "10.201.0.0/24", "protocol": "tcp"}],
	         "egressDefault": "deny"}`,
	"bnd": `{"addresses": ["10.201.0.4"], "allowedPorts": ["19000-19009"]}`,
}

// Layout1 builds the environment with the layout-1 binary.
func Layout1(t testing.TB) *Env { return FromRelease(t, "portcullisctl-layout1.gz") }

// FromRelease builds the environment with an older release's
// portcullisctl kept in test/testdata.
func FromRelease(t testing.TB, release string) *Env {
	t.Helper()
	e := &Env{
		Dir:    testenv.StateDir(t),
		V1:     unpack(t, release),
		V2:     testenv.Binary(t, "./cmd/portcullisctl"),
		NS:     testenv.NewNetNS(t),
		Groups: map[string]cgroup.Cgroup{},
		probe:  testenv.Binary(t, "./test/sockprobe"),
		stop:   filepath.Join(t.TempDir(), "stop"),
	}
	e.NS.IP(t, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	e.NS.IP(t, "link", "set", "d1", "up")
	for i := 1; i <= 4; i++ {
		e.NS.IP(t, "addr", "add", fmt.Sprintf("10.201.0.%d/24", i), "dev", "d0")
	}
	e.NS.IP(t, "link", "set", "d0", "up")
	e.NS.IP(t, "link", "set", "lo", "up")
	for _, name := range []string{"srv", "cli", "bnd"} {
		e.Groups[name] = testenv.Cgroup(t, "upg-"+name)
		doc := filepath.Join(t.TempDir(), name+".json")
		if err := os.WriteFile(doc, []byte(policies[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		e.Run(t, e.V1, "attach", "--id", name, "--cgroup", e.Groups[name].Path, "--policy", doc, "--netns", e.NS.Path)
	}
	e.Run(t, e.V1, "service", "add", "web", "--frontend", "10.201.0.100:80")
	srv := testenv.Start(t, e.Groups["srv"], e.NS.Command(e.probe, "listen", "-proto", "tcp", "-addr", "0.0.0.0:8080", "-name", "srv"))
	if r := testenv.ParseProbe(t, srv.Line(t, 5*time.Second)); !r.OK || r.Local != "10.201.0.2:8080" {
		t.Fatalf("server: %+v", r)
	}
	return e
}

// Run runs a portcullisctl on the env's state and returns its output.
func (e *Env) Run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := e.Try(bin, nil, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a binary with the env's state dir and extra environment.
func (e *Env) Try(bin string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "PORTCULLIS_STATE_DIR="+e.Dir), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// StartLoad starts the client loop (through the frontend, and a connect
// the egress rules refuse) and the bind loop (allowed and forbidden
// binds), and waits until each has done a round.
func (e *Env) StartLoad(t testing.TB) {
	t.Helper()
	bin := testenv.Binary(t, "./test/upgradeprobe")
	e.loads = []*testenv.Proc{
		testenv.Start(t, e.Groups["cli"], e.NS.Command(bin, "-stop", e.stop,
			"-connect", "10.201.0.100:80", "-reply", "srv", "-deny-connect", "10.201.0.1:18080")),
		testenv.Start(t, e.Groups["bnd"], e.NS.Command(bin, "-stop", e.stop, "-bound-ip", "10.201.0.4",
			"-bind", "0.0.0.0:19001", "-deny-bind", "0.0.0.0:19500", "-deny-bind", "10.201.0.1:19002")),
	}
	for _, p := range e.loads {
		if line := p.Line(t, 10*time.Second); line != "ready" {
			t.Fatalf("load: %q; stderr %s", line, p.Stderr())
		}
	}
}

// LoadCounts is what a load loop counted.
type LoadCounts struct {
	Rounds  int      `json:"rounds"`
	OK      int      `json:"ok"`
	Failed  int      `json:"failed"`
	Escaped int      `json:"escaped"`
	Errors  []string `json:"errors"`
}

// StopLoad stops the loops and returns their counts (client, binder).
func (e *Env) StopLoad(t testing.TB) []LoadCounts {
	t.Helper()
	if err := os.WriteFile(e.stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var all []LoadCounts
	for _, p := range e.loads {
		out := p.Output(t, 10*time.Second)
		var c LoadCounts
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &c); err != nil {
			t.Fatalf("load printed %q: %v; stderr %s", out, err, p.Stderr())
		}
		all = append(all, c)
	}
	return all
}

// Snapshot is what must survive an upgrade: the attachments as the tools
// list them, and the number of entries of each map the tools write (the
// port registry, written by the programs at each bind, changes with the
// load).
type Snapshot struct {
	Attachments []state.Attachment
	Entries     map[string]int
}

// Take reads the snapshot with bin (status -o json) and the pinned maps.
func (e *Env) Take(t testing.TB, bin string) Snapshot {
	t.Helper()
	var report struct {
		Attachments []state.Attachment `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(e.Run(t, bin, "status", "-o", "json")), &report); err != nil {
		t.Fatal(err)
	}
	s := Snapshot{Attachments: report.Attachments, Entries: map[string]int{}}
	for _, name := range []string{"policies", "portmaps", "limits", "egress_rules", "svc_frontends", "svc_backends", "svc_names", "attachment_keys", "attachment_netns", "attachments", "traffic", "decisions", "decisions_user", "host_addrs", "publications", "iso_owners"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(e.Dir, "maps", name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("map %s: %v", name, err)
		}
		n := 0
		var prev any
		for {
			key := make([]byte, m.KeySize())
			if err := m.NextKey(prev, &key); errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			} else if err != nil {
				t.Fatalf("map %s: %v", name, err)
			}
			n++
			prev = key
		}
		m.Close()
		s.Entries[name] = n
	}
	return s
}

// Same fails the test unless b has a's attachments, policies and entries.
func Same(t testing.TB, a, b Snapshot) {
	t.Helper()
	if len(a.Attachments) == 0 {
		t.Fatal("no attachments before")
	}
	if !reflect.DeepEqual(a.Attachments, b.Attachments) {
		t.Errorf("attachments changed:\nbefore %+v\nafter  %+v", a.Attachments, b.Attachments)
	}
	for name, n := range a.Entries {
		if b.Entries[name] != n {
			t.Errorf("map %s: %d entries before, %d after", name, n, b.Entries[name])
		}
	}
}

// LinkPrograms returns, for every pinned link of the state's attachment
// folders, the id of the program it runs.
func (e *Env) LinkPrograms(t testing.TB) map[string]ebpf.ProgramID {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(e.Dir, "cgroups", "*", "*"))
	out := map[string]ebpf.ProgramID{}
	for _, path := range paths {
		out[strings.TrimPrefix(path, e.Dir+"/")] = testenv.LinkProgram(t, path)
	}
	return out
}

// Enforced fails unless every container cgroup has exactly one program
// per hook its folder pins a link for (never none, never old and new
// together), and at least hooks of them.
func (e *Env) Enforced(t testing.TB, hooks int) {
	t.Helper()
	for name, cg := range e.Groups {
		pinned, _ := filepath.Glob(filepath.Join(e.Dir, "cgroups", name, "*"))
		if len(pinned) < hooks {
			t.Errorf("container %s: %d links pinned, want at least %d", name, len(pinned), hooks)
		}
		out := testenv.Run(t, "bpftool", "-j", "cgroup", "show", cg.Path)
		var progs []struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal([]byte(out), &progs); err != nil {
			t.Fatalf("bpftool cgroup show %s: %v\n%s", cg.Path, err, out)
		}
		seen := map[string]int{}
		for _, p := range progs {
			seen[p.Name]++
		}
		if len(progs) != len(pinned) {
			t.Errorf("container %s: %d programs attached, %d links pinned: %v", name, len(progs), len(pinned), seen)
		}
		for prog, n := range seen {
			if n != 1 {
				t.Errorf("container %s: program %s attached %d times", name, prog, n)
			}
		}
	}
}

func unpack(t testing.TB, release string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(testenv.RepoRoot(t), "test", "testdata", release))
	if err != nil {
		t.Fatalf("the previous release's portcullisctl (test/testdata/README.md): %v", err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), strings.TrimSuffix(release, ".gz"))
	w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, z); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// LiveConnections sums what the connection caps count (conn_counts): 0
// once every connection of the containers is closed.
func (e *Env) LiveConnections(t testing.TB) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.Dir, "maps", "conn_counts"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var sum, v uint64
	key := make([]byte, m.KeySize())
	it := m.Iterate()
	for it.Next(&key, &v) {
		sum += v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}
