package badinput

import (
	"bytes"
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/input"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// workers run inputs side by side, each on a fixture of its own; inputs of
// one worker run one after the other, so that each one's snapshot is its
// own doing.
const workers = 4

func TestBadInputBattery(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "bpftool", "bpftool")
	bins := map[frontEnd]string{
		plugin: testenv.Binary(t, "./plugins/portcullis"),
		hook:   testenv.Binary(t, "./hooks/portcullis-hook"),
		ctl:    testenv.Binary(t, "./cmd/portcullisctl"),
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}

	fixtures := make([]*fixture, workers)
	var all [][]badInput
	for i := range fixtures {
		f := newFixture(t, i, bins)
		fixtures[i] = f
		all = append(all, f.inputs(t, mount))
	}
	// Every fixture makes the same inputs for its own world; worker i
	// runs the i-th share of them.
	total, valid := 0, 0
	shares := make([][]badInput, workers)
	for j, in := range all[0] {
		w := j % workers
		shares[w] = append(shares[w], all[w][j])
		total++
		if in.steps[0].ok {
			valid++
		}
	}
	if total-valid < 300 {
		t.Fatalf("only %d malformed inputs; the battery needs at least 300", total-valid)
	}
	// The valid inputs run on every worker, so each fixture is shown to work.
	for w := range shares {
		for _, in := range all[w] {
			if in.steps[0].ok && !containsInput(shares[w], in.name) {
				shares[w] = append(shares[w], in)
			}
		}
	}

	start := time.Now()
	var mu sync.Mutex
	failures := 0
	var wg sync.WaitGroup
	for w, f := range fixtures {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, in := range shares[w] {
				if err := f.runInput(t, in); err != nil {
					mu.Lock()
					failures++
					if failures <= 40 {
						t.Errorf("input %q: %v", in.name, err)
					} else {
						t.Errorf("input %q failed too", in.name)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d malformed and %d valid inputs through %d workers in %v; %d failed", total-valid, valid, workers, time.Since(start).Round(time.Millisecond), failures)
	for _, f := range fixtures {
		if own := f.ownOnRoot(t); len(own) > 0 {
			t.Errorf("programs of %s are attached to the cgroup v2 root: %v", f.stateDir, own)
		}
	}
}

func mustMount(t *testing.T) string {
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return mount
}

func containsInput(list []badInput, name string) bool {
	for _, in := range list {
		if in.name == name {
			return true
		}
	}
	return false
}

func newFixture(t *testing.T, n int, bins map[frontEnd]string) *fixture {
	f := &fixture{
		n:         n,
		root:      mustMount(t),
		stateDir:  testenv.StateDir(t),
		work:      t.TempDir(),
		log:       filepath.Join(t.TempDir(), "plugin.log"),
		ns:        testenv.NewNetNS(t),
		cg:        testenv.Cgroup(t, "bad19"),
		bins:      bins,
		addr:      fmt.Sprintf("10.19.%d.2", n),
		otherAddr: fmt.Sprintf("10.19.%d.3", n),
		front:     fmt.Sprintf("10.19.%d.10:19080", n),
	}
	f.ns.IP(t, "addr", "add", f.addr+"/32", "dev", "lo")
	f.ns.IP(t, "link", "set", "lo", "up")
	f.pid = testenv.Start(t, f.cg, f.ns.Command("sleep", "1000")).Cmd.Process.Pid
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	f.deadPid = dead.Process.Pid
	f.servicesDir = filepath.Join(f.work, "services.d")
	f.bundle = filepath.Join(f.work, "bundle")
	f.policiesDir = filepath.Join(f.work, "policies.d")
	for _, d := range []string{f.servicesDir, f.bundle, f.policiesDir, filepath.Join(f.work, "bad-bundles")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(f.bundle, "config.json"), `{"ociVersion": "1.2.0"}`)
	write(filepath.Join(f.bundle, "policy.json"), f.policy())
	write(filepath.Join(f.policiesDir, "web.json"), f.policy())
	// The files attackers name: a FIFO nobody writes, a device, oversized
	// and malformed files, symlinks to them, a directory.
	for _, dir := range []string{f.bundle, f.policiesDir, f.work} {
		if err := unix.Mkfifo(filepath.Join(dir, "fifo.json"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Symlink("/dev/zero", filepath.Join(dir, "zero.json"))
		write(filepath.Join(dir, "huge.json"), f.policy()+strings.Repeat(" ", input.MaxSize))
		write(filepath.Join(dir, "trunc.json"), f.policy()[:10])
		os.Mkdir(filepath.Join(dir, "dir.json"), 0o755)
	}
	if out, err := exec.Command(bins[ctl], "load", "--state-dir", f.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("load: %v\n%s", err, out)
	}
	// A first CNI ADD pins the namespace programs once for good (DEL
	// leaves them pinned, off the cgroup): do it before any snapshot.
	for _, command := range []string{"ADD", "DEL"} {
		cmd := exec.Command(bins[plugin])
		cmd.Dir = f.work
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PORTCULLIS_SERVICES_DIR=" + f.servicesDir}
		for k, v := range f.cniEnv(command) {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Stdin = bytes.NewReader(mutate(t, string(f.cniConf(t)), "services", ""))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("warm-up %s: %v\n%s", command, err, out)
		}
	}
	f.progIDs = map[int]bool{}
	progs, _ := filepath.Glob(filepath.Join(f.stateDir, "progs", "*"))
	netnsProgs, _ := filepath.Glob(filepath.Join(f.stateDir, "netns", "progs", "*"))
	progs = append(progs, netnsProgs...)
	for _, path := range progs {
		p, err := ebpf.LoadPinnedProgram(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		f.progIDs[int(id)] = true
		p.Close()
	}
	if len(f.progIDs) == 0 {
		t.Fatalf("no programs pinned in %s", f.stateDir)
	}
	return f
}

// policy is a valid policy for the fixture's container.
func (f *fixture) policy() string {
	return fmt.Sprintf(`{"addresses": [%q], "allowedPorts": ["19000-19010"], "portMappings": [{"containerPort": 80, "hostPort": 19080}]}`, f.addr)
}

// badBundle makes a bundle whose config.json is what make leaves.
func (f *fixture) badBundle(t *testing.T, name string, make func(config string) error) string {
	dir := filepath.Join(f.work, "bad-bundles", name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := make(filepath.Join(dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// truncations cuts doc at n places spread over its length.
func truncations(doc []byte, n int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		cut := (len(doc) - 1) * i / n
		out = append(out, doc[:cut])
	}
	return out
}

// mutate returns doc (JSON) with the value at path (keys, or indexes for
// arrays, joined by ":") replaced by raw JSON, or removed when raw is "".
func mutate(t *testing.T, doc, path, raw string) []byte {
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("mutate %s: %v", doc, err)
	}
	var repl any
	if raw != "" {
		d := json.NewDecoder(strings.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&repl); err != nil {
			t.Fatalf("mutate: value %s: %v", raw, err)
		}
	}
	keys := strings.Split(path, ":")
	cur := v
	for i, k := range keys {
		last := i == len(keys)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				if raw == "" {
					delete(c, k)
				} else {
					c[k] = repl
				}
			}
			cur = c[k]
		case []any:
			idx, _ := strconv.Atoi(k)
			if last {
				c[idx] = repl
			}
			cur = c[idx]
		default:
			t.Fatalf("mutate: %s is not in %s", path, doc)
		}
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// badValues are values of the wrong type or out of range for any field.
var badValues = []string{`0`, `-1`, `true`, `[]`, `{}`, `1e400`, `"` + strings.Repeat("x", 5000) + `"`}

// inputs generates the fixture's inputs. Every fixture makes the same list,
// in the same order, for its own world.
func (f *fixture) inputs(t *testing.T, mount string) []badInput {
	var ins []badInput
	add := func(name string, steps ...step) { ins = append(ins, badInput{name: name, steps: steps}) }
	ins = append(ins, f.pluginInputs(t, mount)...)
	ins = append(ins, f.hookInputs(t, mount)...)
	ins = append(ins, f.ctlInputs(t, mount)...)

	// A stuck writer holds the state lock: each front end gives up after
	// its deadline with an error that says so.
	lock := map[string]string{"PORTCULLIS_LOCK_TIMEOUT": "1s"}
	for _, in := range []badInput{
		{name: "cni ADD while the state is locked", steps: []step{{bin: plugin, env: merge(f.cniEnv("ADD"), lock), stdin: f.cniConf(t), want: "is locked by another process and was not released within 1s", deadline: 6 * time.Second}}},
		{name: "hook while the state is locked", steps: []step{{bin: hook, args: []string{"createRuntime"}, env: lock, stdin: f.ociState(t, f.annotation()), want: "is locked by another process", deadline: 6 * time.Second}}},
		{name: "ctl attach while the state is locked", steps: []step{{bin: ctl, args: f.attachArgs(), env: lock, want: "is locked by another process", deadline: 6 * time.Second}}},
	} {
		in.locked = true
		ins = append(ins, in)
	}
	// Stdin that never ends.
	add("cni stdin never closed", step{bin: plugin, env: f.cniEnv("ADD"), openStdin: true, want: "stdin did not end within 10s", deadline: input.StdinTimeout + 5*time.Second})
	add("hook stdin never closed", step{bin: hook, args: []string{"createRuntime"}, openStdin: true, want: "stdin did not end within 10s", deadline: input.StdinTimeout + 5*time.Second})
	return ins
}

// sorted ranges over m in key order, so that every fixture makes the same
// inputs in the same order.
func sorted[V any](m map[string]V) iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// --- CNI plugin ---

func (f *fixture) cniEnv(command string) map[string]string {
	return map[string]string{"CNI_COMMAND": command, "CNI_CONTAINERID": fmt.Sprintf("bad19-%d", f.n), "CNI_NETNS": f.ns.Path,
		"CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
}

// cniConf is a valid conf: a policy, a service and a prevResult that
// gives the container its address.
func (f *fixture) cniConf(t *testing.T) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "bad19", "type": "portcullis", "stateDir": %q, "logFile": %q,
		"policy": {"allowedPorts": ["19000-19010"]},
		"services": [{"name": "svc19-%d", "frontends": [%q]}],
		"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": %q}], "ips": [{"address": "%s/32", "interface": 0}]}}`,
		f.stateDir, f.log, f.n, f.front, f.ns.Path, f.addr))
}

func (f *fixture) pluginInputs(t *testing.T, mount string) []badInput {
	var ins []badInput
	conf := f.cniConf(t)
	bad := func(name string, env map[string]string, stdin []byte, want string) {
		ins = append(ins, badInput{name: "cni " + name, steps: []step{{bin: plugin, env: env, stdin: stdin, want: want}}})
	}
	add := f.cniEnv("ADD")

	// Valid: ADD, then DEL, then the service the conf declared (it is
	// the network's, so DEL leaves it) is removed.
	ins = append(ins, badInput{name: "cni valid ADD and DEL", steps: []step{
		{bin: plugin, env: add, stdin: conf, ok: true},
		{bin: plugin, env: f.cniEnv("DEL"), stdin: conf, ok: true},
		{bin: ctl, args: []string{"service", "del", fmt.Sprintf("svc19-%d", f.n)}, ok: true},
	}})

	for i, cut := range truncations(conf, 40) {
		bad(fmt.Sprintf("ADD conf truncated #%d", i), add, cut, "")
	}
	for i, cut := range truncations(conf, 6) {
		bad(fmt.Sprintf("DEL conf truncated #%d", i), f.cniEnv("DEL"), cut, "")
	}
	typed := []string{"cniVersion", "name", "stateDir", "logFile", "policy", "policy:allowedPorts", "policy:allowedPorts:0",
		"services", "services:0", "services:0:name", "services:0:frontends", "services:0:frontends:0", "prevResult", "prevResult:ips",
		"prevResult:ips:0:address", "prevResult:interfaces"}
	for _, path := range typed {
		for _, v := range badValues {
			if v == `[]` && (path == "services" || path == "prevResult:interfaces" || path == "prevResult:ips") {
				continue // empty lists are valid
			}
			if path == "name" && strings.HasPrefix(v, `"`) {
				continue // a long network name is a name
			}
			if v == `{}` && (path == "prevResult" || path == "policy") {
				continue // a result without addresses, an empty policy: valid
			}
			if v == `[]` && path == "policy:allowedPorts" {
				continue
			}
			bad(fmt.Sprintf("%s = %.20s", path, v), add, mutate(t, string(conf), path, v), "")
		}
	}
	for path, values := range sorted(map[string][]string{
		"cniVersion":    {`""`, `"0.1.0"`, `"9.9.9"`, `"1.0"`, `null`},
		"name":          {`""`, `"bad name"`, `"../x"`},
		"stateDir":      {`"relative19"`, `"/etc/portcullis19"`, `"/tmp/pc19"`, `"/sys/fs/bpf/../../etc/pc19"`, `"/dev/zero"`, `"/proc/self"`, strconv.Quote(f.stateDir + "/maps/policies")},
		"logFile":       {`"relative19.log"`, strconv.Quote(filepath.Join(f.work, "fifo.json")), `"/dev/null"`, `"/dev/zero"`, strconv.Quote(f.work), `"/proc/19/none/x"`},
		"policy":        {`{"allowedPorts": "19000"}`, `{"allowedPorts": ["0"]}`, `{"allowedPorts": ["70000"]}`, `{"allowedPorts": ["9-1"]}`, `{"allowedPorts": ["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}`, `{"addresses": ["10.19.0.2"]}`, `{"allowedport": []}`, `{"portMappings": [{"containerPort": 0, "hostPort": 1}]}`, `{"portMappings": [{"containerPort": 80, "hostPort": 99999}]}`, `{"portMappings": [{"containerPort": 80, "hostPort": 81, "protocol": "sctp"}]}`, `{"provides": [{"service": "bad name", "port": 1}]}`, `{"provides": [{"service": "s", "port": 0}]}`, `"x"`},
		"policies":      {`0`, `[]`, `{"a": 0}`, `{"a": {"x": 1}}`, `{"a": {"addresses": ["10.19.0.2"]}}`},
		"services":      {`"x"`, `{}`, `[{}]`, `[{"name": "", "frontends": ["10.19.0.1:80"]}]`, `[{"name": "s", "frontends": []}]`, `[{"name": "s", "frontends": ["10.19.0.1"]}]`, `[{"name": "s", "frontends": ["10.19.0.1:0"]}]`, `[{"name": "s", "frontends": ["0.0.0.0:80"]}]`, `[{"name": "s", "frontends": ["[fe80::1%lo]:80"]}]`, `[{"name": "s", "frontends": ["10.19.0.1:80/sctp"]}]`, `[{"name": "s", "frontends": ["10.19.0.1:80"]}, {"name": "s", "frontends": ["10.19.0.2:80"]}]`, `[{"name": "s", "frontends": ["10.19.0.1:80", "10.19.0.1:80"]}]`, `[{"name": "` + strings.Repeat("s", 64) + `", "frontends": ["10.19.0.1:80"]}]`, `[{"name": "s", "frontends": ["10.19.0.1:80"], "extra": 1}]`},
		"prevResult":    {`"x"`, `[]`, `{"ips": 0}`, `{"ips": [{"address": "bad"}]}`, `{"ips": [{"address": "` + f.otherAddr + `/32"}]}`, `{"cniVersion": "9.9.9", "ips": []}`, `{"interfaces": 0}`},
		"runtimeConfig": {`0`, `[]`, `{"portMappings": 0}`, `{"portMappings": [{"containerPort": 80, "hostPort": 0}]}`, `{"portMappings": [{"containerPort": 80, "hostPort": 19080, "protocol": "sctp"}]}`, `{"cgroupPath": 0}`},
		// The namespace programs' cgroup. (Another real cgroup is valid
		// while no namespace is attached.)
		"netnsCgroup":               {`0`, `"/etc"`, `"/dev/zero"`, `"/portcullis19-none"`, `"../../etc"`, strconv.Quote(f.cg.Path + "/cgroup.procs")},
		"polcy":                     {`{}`},
		"stateDIR":                  {`"/x"`},
		"extra19":                   {`1`},
		"cni.dev/valid-attachments": {`0`},
	}) {
		for _, v := range values {
			bad(fmt.Sprintf("%s = %.40s", path, v), add, mutate(t, string(conf), path, v), "")
		}
	}
	// The case: services valid, but the address is not in the
	// namespace: code 101, and the service must not be left declared.
	bad("address not in the namespace, with services", add, mutate(t, string(conf), "prevResult:ips:0:address", `"`+f.otherAddr+`/32"`), "is not configured in network namespace")
	bad("stateDir outside bpffs", add, mutate(t, string(conf), "stateDir", `"/etc/portcullis19"`), "is not on bpffs")
	// Without stateDir, PORTCULLIS_STATE_DIR decides.
	noDir := mutate(t, string(conf), "stateDir", "")
	for _, v := range []string{"relative19", "/etc/portcullis19", "/tmp/pc19", "/sys/fs/bpf/../../etc/pc19", "/dev/zero"} {
		bad("PORTCULLIS_STATE_DIR="+v, merge(add, map[string]string{"PORTCULLIS_STATE_DIR": v}), noDir, "PORTCULLIS_STATE_DIR")
	}
	for _, v := range []string{"soon", "0", "-1s", "1h"} {
		bad("PORTCULLIS_LOCK_TIMEOUT="+v, merge(add, map[string]string{"PORTCULLIS_LOCK_TIMEOUT": v}), conf, "PORTCULLIS_LOCK_TIMEOUT")
	}
	fifo := filepath.Join(f.work, "fifo.json")
	regular := filepath.Join(f.bundle, "config.json")
	for name, v := range sorted(map[string]map[string]string{
		"no CNI_COMMAND value":     {"CNI_COMMAND": "FOO"},
		"lower-case command":       {"CNI_COMMAND": "add"},
		"no CNI_CONTAINERID":       {"CNI_CONTAINERID": ""},
		"bad CNI_CONTAINERID":      {"CNI_CONTAINERID": "a b/c"},
		"no CNI_NETNS":             {"CNI_NETNS": ""},
		"CNI_NETNS missing":        {"CNI_NETNS": "/nonexistent19"},
		"CNI_NETNS /dev/zero":      {"CNI_NETNS": "/dev/zero"},
		"CNI_NETNS a FIFO":         {"CNI_NETNS": fifo},
		"CNI_NETNS a regular file": {"CNI_NETNS": regular},
		"CNI_NETNS a dead pid":     {"CNI_NETNS": fmt.Sprintf("/proc/%d/ns/net", f.deadPid)},
		"CNI_NETNS relative":       {"CNI_NETNS": "ns19"},
		"CNI_NETNS ..":             {"CNI_NETNS": f.ns.Path + "/../.."},
		"no CNI_IFNAME":            {"CNI_IFNAME": ""},
		"long CNI_IFNAME":          {"CNI_IFNAME": strings.Repeat("x", 20)},
		"CNI_IFNAME with a slash":  {"CNI_IFNAME": "a/b"},
		"CNI_IFNAME ..":            {"CNI_IFNAME": ".."},
		"CNI_ARGS garbage":         {"CNI_ARGS": "garbage"},
		"CNI_ARGS unknown policy":  {"CNI_ARGS": "IgnoreUnknown=1;PORTCULLIS_POLICY=nope"},
		"CNI_ARGS unknown key":     {"CNI_ARGS": "A=B"},
		"no CNI_PATH":              {"CNI_PATH": ""},
	}) {
		bad(name, merge(add, v), conf, "")
	}
	for _, cmd := range []string{"DEL", "CHECK", "GC", "STATUS"} {
		bad(cmd+" stateDir outside bpffs", f.cniEnv(cmd), mutate(t, string(mutate(t, string(conf), "cniVersion", `"1.1.0"`)), "stateDir", `"/etc/portcullis19"`), "")
		bad(cmd+" not JSON", f.cniEnv(cmd), []byte(`not json`), "")
	}
	bad("CHECK of a container never added", f.cniEnv("CHECK"), conf, "is not attached")
	// stdin itself.
	ins = append(ins,
		badInput{name: "cni stdin /dev/zero", steps: []step{{bin: plugin, env: add, stdinFile: "/dev/zero", want: "larger than the 1048576-byte (1 MiB) input limit"}}},
		badInput{name: "cni stdin oversized", steps: []step{{bin: plugin, env: add, stdin: append(bytes.Clone(conf), bytes.Repeat([]byte(" "), input.MaxSize)...), want: "input limit"}}},
	)
	bad("empty stdin", add, nil, "")
	bad("deep nesting", add, []byte(strings.Repeat("[", 100000)), "")
	bad("NUL bytes", add, bytes.ReplaceAll(bytes.Clone(conf), []byte(`"name"`), []byte("\"na\x00me\"")), "")
	bad("invalid UTF-8 key", add, bytes.ReplaceAll(bytes.Clone(conf), []byte(`"policy"`), []byte("\"pol\xffcy\"")), "")
	bad("trailing garbage", add, append(bytes.Clone(conf), []byte(" {}")...), "")
	return ins
}

// --- OCI hook ---

// annotation is the valid inline policy annotation.
func (f *fixture) annotation() map[string]string {
	return map[string]string{"io.portcullis.policy": f.policy()}
}

// ociState is a valid createRuntime state for the fixture's container.
func (f *fixture) ociState(t *testing.T, annotations map[string]string) []byte {
	doc := map[string]any{"ociVersion": "1.2.0", "id": fmt.Sprintf("bad19-hook-%d", f.n), "status": "creating", "pid": f.pid, "bundle": f.bundle, "annotations": annotations}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) hookInputs(t *testing.T, mount string) []badInput {
	var ins []badInput
	create := []string{"createRuntime"}
	bad := func(name string, args []string, env map[string]string, stdin []byte, want string) {
		ins = append(ins, badInput{name: "hook " + name, steps: []step{{bin: hook, args: args, env: env, stdin: stdin, want: want}}})
	}
	state := f.ociState(t, f.annotation())
	stopped := mutate(t, string(state), "status", `"stopped"`)
	ins = append(ins, badInput{name: "hook valid createRuntime and poststop", steps: []step{
		{bin: hook, args: create, stdin: state, ok: true},
		{bin: hook, args: []string{"poststop"}, stdin: stopped, ok: true},
	}})
	ins = append(ins, badInput{name: "hook valid policy-file, auto stages", steps: []step{
		{bin: hook, args: []string{"auto"}, stdin: f.ociState(t, map[string]string{"io.portcullis.policy-file": "policy.json"}), ok: true},
		{bin: hook, args: []string{"auto"}, stdin: stopped, ok: true},
	}})

	for _, args := range [][]string{nil, {"bogus"}, {"poststart"}, {"CREATERUNTIME"}} {
		bad(fmt.Sprintf("stage %q", args), args, nil, state, "stage")
	}
	for i, cut := range truncations(state, 30) {
		bad(fmt.Sprintf("state truncated #%d", i), create, nil, cut, "")
	}
	for i, cut := range truncations(stopped, 5) {
		bad(fmt.Sprintf("poststop state truncated #%d", i), []string{"poststop"}, nil, cut, "")
	}
	for _, path := range []string{"id", "pid", "bundle", "annotations", "annotations:io.portcullis.policy"} {
		for _, v := range badValues {
			if path == "annotations" && v == `{}` {
				continue // no annotation: the container is left alone
			}
			if path == "id" && strings.HasPrefix(v, `"`) {
				continue // a long id is an id
			}
			bad(fmt.Sprintf("%s = %.20s", path, v), create, nil, mutate(t, string(state), path, v), "")
		}
	}
	for path, values := range sorted(map[string][]string{
		"id":     {`""`, `null`},
		"pid":    {`0`, `null`, strconv.Itoa(f.deadPid), `999999999`, `2`, strconv.Itoa(os.Getpid())},
		"bundle": {`""`, `"relative19"`, `"/nonexistent19"`, `"/dev/zero"`, strconv.Quote(filepath.Join(f.work, "fifo.json")), strconv.Quote(filepath.Join(f.bundle, "config.json")), strconv.Quote(f.bundle + "/../../../../nonexistent19")},
		"status": {`"running"`, `0`},
	}) {
		for _, v := range values {
			args := create
			if path == "status" {
				args = []string{"auto"}
			}
			bad(fmt.Sprintf("%s = %s", path, v), args, nil, mutate(t, string(state), path, v), "")
		}
	}
	// config.json of every bad kind.
	for name, make := range sorted(map[string]func(string) error{
		"fifo":      func(p string) error { return unix.Mkfifo(p, 0o600) },
		"devzero":   func(p string) error { return os.Symlink("/dev/zero", p) },
		"directory": func(p string) error { return os.Mkdir(p, 0o755) },
		"huge":      func(p string) error { return os.WriteFile(p, []byte(`{}`+strings.Repeat(" ", input.MaxSize)), 0o644) },
		"truncated": func(p string) error { return os.WriteFile(p, []byte(`{"ociVersion": `), 0o644) },
		"mistyped":  func(p string) error { return os.WriteFile(p, []byte(`{"annotations": []}`), 0o644) },
		"missing":   func(p string) error { return nil },
	}) {
		b := f.badBundle(t, name, make)
		bad("config.json "+name, create, nil, mutate(t, string(state), "bundle", strconv.Quote(b)), "")
	}
	// Annotations naming files and policies.
	for value, want := range sorted(map[string]string{
		"/dev/zero":                        "is a character device",
		"zero.json":                        "is a character device",
		"fifo.json":                        "is a FIFO",
		filepath.Join(f.work, "fifo.json"): "is a FIFO",
		"huge.json":                        "input limit",
		"trunc.json":                       "invalid policy",
		"dir.json":                         "is a directory",
		".":                                "is a directory",
		"../../../../../../dev/zero":       "is a character device",
		"../bundle/../fifo.json":           "is a FIFO",
		"/dev/stdin":                       "",
		"/dev/null":                        "is a character device",
		"/proc/self/status":                "invalid policy",
		"/etc/passwd":                      "invalid policy",
		"nonexistent19.json":               "no such file",
		"":                                 "is empty",
	}) {
		bad("policy-file "+value, create, nil, f.ociState(t, map[string]string{"io.portcullis.policy-file": value}), want)
	}
	for value, want := range sorted(map[string]string{
		"../web": "is not a policy name", "a/b": "is not a policy name", "": "is not a policy name", ".": "is not a policy name",
		"fifo": "is a FIFO", "zero": "is a character device", "huge": "input limit", "trunc": "invalid policy", "dir": "is a directory", "none19": "no such file",
	}) {
		bad("policy-name "+value, create, nil, f.ociState(t, map[string]string{"io.portcullis.policy-name": value}), want)
	}
	for _, value := range []string{f.policy()[:20], `{"allowedPorts": ["0"]}`, `{"addresses": ["` + f.otherAddr + `"]}`, `{"addresses": ["0.0.0.0"]}`, `{"x": 1}`, `[]`, `null`, ``, `{"addresses": ["10.19.0.0/24"]}`} {
		bad(fmt.Sprintf("policy %.30s", value), create, nil, f.ociState(t, map[string]string{"io.portcullis.policy": value}), "")
	}
	bad("two annotations", create, nil, f.ociState(t, map[string]string{"io.portcullis.policy": "{}", "io.portcullis.policy-name": "web"}), "set only one of them")
	bad("unknown annotation", create, nil, f.ociState(t, map[string]string{"io.portcullis.polcy": "{}"}), "unknown annotation")
	for name, env := range sorted(map[string]map[string]string{
		"PORTCULLIS_STATE_DIR relative": {"PORTCULLIS_STATE_DIR": "relative19"},
		"PORTCULLIS_STATE_DIR /etc":     {"PORTCULLIS_STATE_DIR": "/etc/portcullis19"},
		"PORTCULLIS_STATE_DIR /tmp":     {"PORTCULLIS_STATE_DIR": "/tmp/pc19"},
		"PORTCULLIS_STATE_DIR ..":       {"PORTCULLIS_STATE_DIR": "/sys/fs/bpf/../../etc/pc19"},
		"PORTCULLIS_LOCK_TIMEOUT soon":  {"PORTCULLIS_LOCK_TIMEOUT": "soon"},
		"PORTCULLIS_LOCK_TIMEOUT 0":     {"PORTCULLIS_LOCK_TIMEOUT": "0"},
		"PORTCULLIS_LOCK_TIMEOUT 1h":    {"PORTCULLIS_LOCK_TIMEOUT": "1h"},
	}) {
		bad(name, create, env, state, "")
	}
	bad("PORTCULLIS_POLICIES_DIR /dev/zero", create, map[string]string{"PORTCULLIS_POLICIES_DIR": "/dev/zero"}, f.ociState(t, map[string]string{"io.portcullis.policy-name": "web"}), "")
	bad("PORTCULLIS_POLICIES_DIR relative", create, map[string]string{"PORTCULLIS_POLICIES_DIR": "pd19"}, f.ociState(t, map[string]string{"io.portcullis.policy-name": "web"}), "")
	ins = append(ins,
		badInput{name: "hook stdin /dev/zero", steps: []step{{bin: hook, args: create, stdinFile: "/dev/zero", want: "input limit"}}},
		badInput{name: "hook stdin oversized", steps: []step{{bin: hook, args: create, stdin: append(bytes.Clone(state), bytes.Repeat([]byte(" "), input.MaxSize)...), want: "input limit"}}},
	)
	bad("empty stdin", create, nil, nil, "")
	bad("deep nesting", create, nil, []byte(strings.Repeat(`{"a":`, 20000)), "")
	return ins
}

// --- portcullisctl ---

func (f *fixture) attachArgs() []string {
	return []string{"attach", "--cgroup", f.cg.Path, "--policy", filepath.Join(f.bundle, "policy.json"), "--netns", f.ns.Path, "--id", fmt.Sprintf("bad19-ctl-%d", f.n)}
}

func (f *fixture) ctlInputs(t *testing.T, mount string) []badInput {
	var ins []badInput
	bad := func(name string, env map[string]string, args ...string) {
		ins = append(ins, badInput{name: "ctl " + name, steps: []step{{bin: ctl, args: args, env: env}}})
	}
	good := f.attachArgs()
	id := good[len(good)-1]
	ins = append(ins, badInput{name: "ctl valid attach and detach", steps: []step{
		{bin: ctl, args: good, ok: true},
		{bin: ctl, args: []string{"detach", "--id", id}, ok: true},
	}})
	fromStdin := append(append([]string{}, good[:len(good)-2]...), "--id", id+"-stdin")
	for i := range fromStdin {
		if fromStdin[i] == "--policy" {
			fromStdin[i+1] = "-"
		}
	}
	ins = append(ins, badInput{name: "ctl valid attach from stdin and detach", steps: []step{
		{bin: ctl, args: fromStdin, stdin: []byte(f.policy()), ok: true},
		{bin: ctl, args: []string{"detach", "--id", id + "-stdin"}, ok: true},
	}})
	ins = append(ins,
		badInput{name: "ctl --policy - from /dev/zero", steps: []step{{bin: ctl, args: fromStdin, stdinFile: "/dev/zero", want: "input limit"}}},
		badInput{name: "ctl --policy - truncated", steps: []step{{bin: ctl, args: fromStdin, stdin: []byte(f.policy()[:15])}}},
		badInput{name: "ctl --policy - never closed", steps: []step{{bin: ctl, args: fromStdin, openStdin: true, want: "stdin did not end within 10s", deadline: input.StdinTimeout + 5*time.Second}}},
	)
	with := func(flag, value string) []string {
		out := append([]string{}, good...)
		for i := range out {
			if out[i] == flag {
				out[i+1] = value
			}
		}
		return out
	}
	// --policy
	for _, p := range []string{"/dev/zero", "/dev/null", "/dev/stdin", "zero.json", "fifo.json", "huge.json", "trunc.json", "dir.json", "nonexistent19.json", "", filepath.Join(f.policiesDir, "fifo.json")} {
		bad("--policy "+p, nil, with("--policy", p)...)
	}
	policyFile := func(name, content string) string {
		path := filepath.Join(f.work, "bad-bundles", name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for i, cut := range truncations([]byte(f.policy()), 15) {
		bad(fmt.Sprintf("--policy truncated #%d", i), nil, with("--policy", policyFile(fmt.Sprintf("cut%d.json", i), string(cut)))...)
	}
	for _, path := range []string{"addresses", "allowedPorts", "portMappings", "portMappings:0:hostPort", "portMappings:0:containerPort"} {
		for j, v := range badValues {
			if v == `[]` && path != "portMappings:0:hostPort" && path != "portMappings:0:containerPort" {
				continue // empty lists are valid
			}
			bad(fmt.Sprintf("--policy %s = %.20s", path, v), nil, with("--policy", policyFile(fmt.Sprintf("%s-%d.json", path, j), string(mutate(t, f.policy(), path, v))))...)
		}
	}
	bad("--policy with an address not in the netns", nil, with("--policy", policyFile("other.json", strings.Replace(f.policy(), f.addr, f.otherAddr, 1)))...)
	bad("--policy unknown field", nil, with("--policy", policyFile("unknown.json", `{"ports": []}`))...)
	// --cgroup
	link := filepath.Join(f.work, "root-link")
	os.Symlink(mount, link)
	for _, c := range []string{".", mount, mount + "/", "x/..", filepath.Base(f.cg.Path) + "/..", f.cg.Path + "/../", link, "../../etc", "/etc", "/dev/zero", "/portcullis19-none", "", "/sys/fs/cgroup/cpu", filepath.Join(f.cg.Path, "cgroup.procs")} {
		bad("--cgroup "+c, nil, with("--cgroup", c)...)
	}
	for _, i := range []string{"a.b", strings.Repeat("x", 200), "../x", "_x", "a/b"} {
		bad("--id "+i, nil, with("--id", i)...)
	}
	for _, n := range []string{"/dev/zero", "/nonexistent19", filepath.Join(f.work, "fifo.json"), filepath.Join(f.bundle, "config.json"), fmt.Sprintf("/proc/%d/ns/net", f.deadPid), "relative19"} {
		bad("--netns "+n, nil, with("--netns", n)...)
	}
	for _, d := range []string{"relative19", "/etc/portcullis19", "/tmp/pc19", "/dev/zero", "", "/sys/fs/bpf/../../etc"} {
		bad("--state-dir "+d, nil, append(append([]string{}, good...), "--state-dir", d)...)
		if d != "" { // empty is the default
			bad("PORTCULLIS_STATE_DIR "+d, map[string]string{"PORTCULLIS_STATE_DIR": d}, "status")
		}
	}
	bad("PORTCULLIS_LOCK_TIMEOUT soon", map[string]string{"PORTCULLIS_LOCK_TIMEOUT": "soon"}, good...)
	bad("-o yaml", nil, "status", "-o", "yaml")
	bad("unknown verb", nil, "atach")
	bad("unknown flag", nil, append(append([]string{}, good...), "--bogus")...)
	bad("extra argument", nil, append(append([]string{}, good...), "extra")...)
	bad("no flags", nil, "attach")
	bad("detach unknown id", nil, "detach", "--id", "none19")
	bad("detach nothing", nil, "detach")
	for _, fe := range []string{"10.19.0.1", "x:80", "10.19.0.1:0", "0.0.0.0:80", "10.19.0.1:80/sctp", "[fe80::1%lo]:80", "10.19.0.1:99999"} {
		bad("service add --frontend "+fe, nil, "service", "add", "s19", "--frontend", fe)
	}
	bad("service add bad name", nil, "service", "add", "a b", "--frontend", "10.19.0.1:80")
	bad("service add no frontend", nil, "service", "add", "s19")
	bad("service del none", nil, "service", "del", "none19")
	bad("service show none", nil, "service", "show", "none19")
	bad("service backend add none", nil, "service", "backend", "add", "none19", "10.19.0.1:80")
	for name, content := range sorted(map[string]func(string) error{
		"fifo":      func(p string) error { return unix.Mkfifo(p, 0o600) },
		"devzero":   func(p string) error { return os.Symlink("/dev/zero", p) },
		"huge":      func(p string) error { return os.WriteFile(p, []byte(`[]`+strings.Repeat(" ", input.MaxSize)), 0o644) },
		"truncated": func(p string) error { return os.WriteFile(p, []byte(`[{"name": `), 0o644) },
		"bad": func(p string) error {
			return os.WriteFile(p, []byte(`{"name": "s19", "frontends": ["0.0.0.0:80"]}`), 0o644)
		},
		"directory": func(p string) error { return os.Mkdir(p, 0o755) },
	}) {
		dir := filepath.Join(f.work, "bad-bundles", "services-"+name)
		os.Mkdir(dir, 0o755)
		if err := content(filepath.Join(dir, "x.json")); err != nil {
			t.Fatal(err)
		}
		bad("service apply "+name, nil, "service", "apply", "--dir", dir)
	}
	for _, b := range []string{"garbage", "10.19.0.1", "10.19.0.1:0"} {
		bad("terminate --backend "+b, nil, "terminate", "--backend", b)
	}
	bad("terminate --protocol sctp", nil, "terminate", "--backend", "10.19.0.1:80", "--protocol", "sctp")
	return ins
}
