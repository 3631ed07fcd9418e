package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// The runc tests run busybox-static and the static sockprobe in real runc
// containers whose config.json names portcullis-hook at createRuntime and
// poststop, and look at the result from outside: ss, connections, the
// container's own output and the pinned state.

// Host-network containers share the host's network namespace, so these
// tests bind only loopback addresses.
const (
	runcPort       = "24601" // the port in allowedPorts
	runcDenied     = "24602" // a port outside it
	runcMappedFrom = "8080"  // containerPort of the mapping
	runcMappedTo   = "24680" // its hostPort
)

func runcPolicy(addr string) string {
	return fmt.Sprintf(`{"addresses": [%q], "allowedPorts": [%q],
		"portMappings": [{"containerPort": %s, "hostPort": %s}]}`, addr, runcPort, runcMappedFrom, runcMappedTo)
}

// runcEnv is what every runc test needs: a state directory, the built hook
// and sockprobe, and a runc root of its own so tests never see each other's
// containers.
type runcEnv struct {
	t        *testing.T
	stateDir string
	hook     string
	probe    string
	busybox  string
	root     string
}

func newRuncEnv(t *testing.T) *runcEnv {
	testenv.RequireCommand(t, "runc", "runc")
	testenv.RequireCommand(t, "ss", "iproute2")
	return &runcEnv{
		t:        t,
		stateDir: testenv.StateDir(t),
		hook:     testenv.Binary(t, "./hooks/portcullis-hook"),
		probe:    testenv.Binary(t, "./test/sockprobe"),
		busybox:  testenv.RequireCommand(t, "busybox", "busybox-static"),
		root:     filepath.Join(t.TempDir(), "runc"),
	}
}

// runc runs one runc command with the test's root.
func (e *runcEnv) runc(args ...string) (string, error) {
	out, err := exec.Command("runc", append([]string{"--root", e.root}, args...)...).CombinedOutput()
	return string(out), err
}

// bundleOptions shape one container's bundle.
type bundleOptions struct {
	args        []string
	annotations map[string]string
	netns       string // a network namespace path; empty shares the host's
	// hooksD, when set, places the hook the way podman and CRI-O do with
	// a hooks.d file: its command line at each of its stages.
	hooksD *hooksDFile
}

// hooksDFile is the oci-hooks(5) schema 1.0.0.
type hooksDFile struct {
	Version string     `json:"version"`
	Hook    specs.Hook `json:"hook"`
	When    struct {
		Annotations map[string]string `json:"annotations"`
	} `json:"when"`
	Stages []string `json:"stages"`
}

// bundle writes a bundle: a rootfs of busybox-static and sockprobe, and a
// config.json from `runc spec` with the hook at createRuntime and poststop.
func (e *runcEnv) bundle(opts bundleOptions) string {
	t := e.t
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "rootfs", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, e.busybox, filepath.Join(bin, "busybox"))
	copyFile(t, e.probe, filepath.Join(bin, "sockprobe"))
	for _, applet := range []string{"sh", "nc", "sleep", "echo", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("runc", "spec")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var spec specs.Spec
	readJSON(t, filepath.Join(dir, "config.json"), &spec)

	// Raising rlimits is not permitted on every host (nor needed here).
	spec.Process.Rlimits = nil
	spec.Process.Terminal = false
	spec.Process.Args = opts.args
	spec.Process.Env = []string{"PATH=/bin"}
	var namespaces []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			namespaces = append(namespaces, ns)
		}
	}
	if opts.netns != "" {
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: opts.netns})
	}
	spec.Linux.Namespaces = namespaces
	hook := func(stage string) []specs.Hook {
		return []specs.Hook{{
			Path: e.hook,
			Args: []string{"portcullis-hook", stage},
			Env:  []string{"PORTCULLIS_STATE_DIR=" + e.stateDir},
		}}
	}
	spec.Hooks = &specs.Hooks{CreateRuntime: hook("createRuntime"), Poststop: hook("poststop")}
	if opts.hooksD != nil {
		h := opts.hooksD.Hook
		h.Path = e.hook
		h.Env = append(h.Env, "PORTCULLIS_STATE_DIR="+e.stateDir)
		spec.Hooks = &specs.Hooks{}
		for _, stage := range opts.hooksD.Stages {
			switch stage {
			case "createRuntime":
				spec.Hooks.CreateRuntime = append(spec.Hooks.CreateRuntime, h)
			case "poststop":
				spec.Hooks.Poststop = append(spec.Hooks.Poststop, h)
			default:
				t.Fatalf("hooks.d file: unexpected stage %q", stage)
			}
		}
	}
	spec.Annotations = opts.annotations
	writeJSON(t, filepath.Join(dir, "config.json"), &spec)
	return dir
}

// runcContainer is a container made by runc create.
type runcContainer struct {
	env *runcEnv
	id  string
	out string // the container's stdout and stderr (and runc's)
}

// create runs `runc create`, passing the test's files as the container's
// stdio so runc returns at once. Cleanup deletes the container.
func (e *runcEnv) create(id, bundle string) (*runcContainer, error) {
	t := e.t
	t.Helper()
	c := &runcContainer{env: e, id: id, out: filepath.Join(t.TempDir(), "output")}
	out, err := os.Create(c.out)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command("runc", "--root", e.root, "create", "--bundle", bundle, id)
	cmd.Stdout, cmd.Stderr = out, out
	t.Cleanup(func() { e.runc("delete", "--force", id) })
	if err := cmd.Run(); err != nil {
		// runc quotes the hook's stderr inside its own message.
		return c, fmt.Errorf("runc create %s: %v: %s", id, err, strings.ReplaceAll(c.output(t), `\"`, `"`))
	}
	return c, nil
}

// start creates and starts a container, failing the test on error.
func (e *runcEnv) start(id, bundle string) *runcContainer {
	e.t.Helper()
	c, err := e.create(id, bundle)
	if err != nil {
		e.t.Fatal(err)
	}
	if out, err := e.runc("start", id); err != nil {
		e.t.Fatalf("runc start %s: %v\n%s", id, err, out)
	}
	return c
}

func (c *runcContainer) output(t *testing.T) string {
	data, err := os.ReadFile(c.out)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// exec runs a command in the container (it joins the container's cgroup,
// so the policy applies) and returns its output and exit error.
func (c *runcContainer) exec(argv ...string) (string, error) {
	return c.env.runc(append([]string{"exec", c.id}, argv...)...)
}

// execDetached starts a command in the container and leaves it running.
func (c *runcContainer) execDetached(t *testing.T, argv ...string) {
	t.Helper()
	cmd := exec.Command("runc", append([]string{"--root", c.env.root, "exec", "--detach", c.id}, argv...)...)
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc exec --detach %s %v: %v", c.id, argv, err)
	}
}

// pid returns the container's init pid from `runc state`.
func (c *runcContainer) pid(t *testing.T) int {
	t.Helper()
	out, err := c.env.runc("state", c.id)
	if err != nil {
		t.Fatalf("runc state %s: %v\n%s", c.id, err, out)
	}
	var st specs.State
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	return st.Pid
}

// stop kills the container, waits until runc sees it stopped, and deletes
// it: runc runs the poststop hooks at delete.
func (c *runcContainer) stop(t *testing.T) {
	t.Helper()
	c.env.runc("kill", c.id, "KILL")
	for i := 0; ; i++ {
		out, err := c.env.runc("state", c.id)
		if err == nil && strings.Contains(out, `"status": "stopped"`) {
			break
		}
		if i == 100 {
			t.Fatalf("container %s did not stop: %v\n%s", c.id, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := c.env.runc("delete", c.id); err != nil {
		t.Fatalf("runc delete %s: %v\n%s", c.id, err, out)
	}
}

// attachments lists what the state holds; none when it was never loaded.
func (e *runcEnv) attachments() []state.Attachment {
	e.t.Helper()
	s, err := state.Open(e.stateDir, false)
	if errors.Is(err, state.ErrNotLoaded) {
		return nil
	} else if err != nil {
		e.t.Fatal(err)
	}
	defer s.Close()
	list, err := s.Attachments()
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

func attachmentIDs(list []state.Attachment) []string {
	var ids []string
	for _, a := range list {
		ids = append(ids, a.ID)
	}
	return ids
}

// waitListening polls until want is exactly the set of local addresses
// listening on port (in netns, or the host's when nil).
func waitListening(t *testing.T, netns *testenv.NetNS, port string, want ...string) {
	t.Helper()
	var got []string
	for i := 0; i < 100; i++ {
		got = listening(t, netns, port)
		slices.Sort(got)
		slices.Sort(want)
		if slices.Equal(got, want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("TCP listeners on port %s: %v, want %v", port, got, want)
}

func listening(t *testing.T, netns *testenv.NetNS, port string) []string {
	t.Helper()
	if netns != nil {
		var p uint16
		fmt.Sscan(port, &p)
		return netns.Listening(t, "tcp", p)
	}
	out := testenv.Run(t, "ss", "-Hltn", "sport = :"+port)
	var addrs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if fields := strings.Fields(line); len(fields) >= 4 {
			addrs = append(addrs, fields[3])
		}
	}
	return addrs
}

// greeting connects from the host to a sockprobe server and returns the
// name it answers with.
func greeting(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

// TestRuncHostNetwork runs two host-network containers at once, pinned to
// two loopback addresses, both binding the same wildcard port (seed 001).
func TestRuncHostNetwork(t *testing.T) {
	e := newRuncEnv(t)
	suffix := testenv.Suffix()
	// One id has a dot, which bpffs refuses: the hook maps it.
	ids := []string{"pc-hook-a." + suffix, "pc-hook-b-" + suffix}
	addrs := []string{"127.0.0.21", "127.0.0.22"}
	var containers []*runcContainer
	for i, id := range ids {
		bundle := e.bundle(bundleOptions{
			args:        []string{"sockprobe", "listen", "-addr", "0.0.0.0:" + runcPort, "-name", id},
			annotations: map[string]string{ocihook.AnnotationPolicy: runcPolicy(addrs[i])},
		})
		containers = append(containers, e.start(id, bundle))
	}

	// Both wildcard binds land on their own address, same port.
	waitListening(t, nil, runcPort, addrs[0]+":"+runcPort, addrs[1]+":"+runcPort)
	for i, id := range ids {
		if got := greeting(t, addrs[i]+":"+runcPort); got != id {
			t.Fatalf("%s:%s answers %q, want %q", addrs[i], runcPort, got, id)
		}
	}

	// The attachments are the hook's, on the containers' cgroups.
	list := e.attachments()
	want := []string{ocihook.AttachmentID(ids[0]), ids[1]}
	slices.Sort(want)
	if got := attachmentIDs(list); !slices.Equal(got, want) {
		t.Fatalf("attachments %v, want %v", got, want)
	}
	for i, c := range containers {
		cg, err := cgroup.OfPID(c.pid(t))
		if err != nil {
			t.Fatal(err)
		}
		a := list[slices.Index(attachmentIDs(list), ocihook.AttachmentID(ids[i]))]
		if a.CgroupID != cg.ID || a.Owner != ocihook.Owner || a.NetNS != "" {
			t.Fatalf("attachment %+v, want cgroup %s (id %d), owner %s, host netns", a, cg.Path, cg.ID, ocihook.Owner)
		}
	}

	// A bind outside allowedPorts fails inside the container with EPERM,
	// for busybox nc and for the static Go sockprobe.
	a := containers[0]
	out, err := a.exec("nc", "-l", "-p", runcDenied)
	if err == nil || !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("nc -l -p %s in the container: %v, output %q; want bind: Operation not permitted", runcDenied, err, out)
	}
	out, _ = a.exec("sockprobe", "listen", "-addr", "0.0.0.0:"+runcDenied)
	if r := testenv.ParseProbe(t, strings.TrimSpace(out)); r.OK || r.Errno != "EPERM" {
		t.Fatalf("sockprobe listen on %s: %+v, want EPERM", runcDenied, r)
	}
	waitListening(t, nil, runcDenied)

	// The mapped port is bound on the host port, in both containers.
	for i, c := range containers {
		c.execDetached(t, "sockprobe", "listen", "-addr", "0.0.0.0:"+runcMappedFrom, "-name", "mapped-"+ids[i])
	}
	waitListening(t, nil, runcMappedTo, addrs[0]+":"+runcMappedTo, addrs[1]+":"+runcMappedTo)
	if got := greeting(t, addrs[1]+":"+runcMappedTo); got != "mapped-"+ids[1] {
		t.Fatalf("%s:%s answers %q", addrs[1], runcMappedTo, got)
	}

	// runc delete runs poststop: the first container's attachment goes,
	// the second's stays.
	containers[0].stop(t)
	if got := attachmentIDs(e.attachments()); !slices.Equal(got, []string{ids[1]}) {
		t.Fatalf("after deleting %s: attachments %v, want [%s]", ids[0], got, ids[1])
	}
	containers[1].stop(t)
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after deleting both containers: attachments %v", attachmentIDs(got))
	}
	waitListening(t, nil, runcPort)
}

// TestRuncOwnNetNS runs a container in a network namespace of its own; the
// policy's address exists only there, so the hook must check it there.
func TestRuncOwnNetNS(t *testing.T) {
	e := newRuncEnv(t)
	ns := testenv.NewNetNS(t)
	ns.IP(t, "addr", "add", "10.77.0.2/32", "dev", "lo")
	id := "pc-hook-ns-" + testenv.Suffix()
	bundle := e.bundle(bundleOptions{
		args:        []string{"sockprobe", "listen", "-addr", "0.0.0.0:" + runcPort, "-name", id},
		annotations: map[string]string{ocihook.AnnotationPolicy: runcPolicy("10.77.0.2")},
		netns:       ns.Path,
	})
	c := e.start(id, bundle)

	waitListening(t, ns, runcPort, "10.77.0.2:"+runcPort)
	r := testenv.ParseProbe(t, strings.TrimSpace(ns.Exec(t, e.probe, "connect", "-addr", "10.77.0.2:"+runcPort)))
	if !r.OK || r.Reply != id {
		t.Fatalf("connect inside the namespace: %+v, want reply %q", r, id)
	}
	list := e.attachments()
	if len(list) != 1 || list[0].ID != id || list[0].NetNS != ns.Path {
		t.Fatalf("attachments %+v, want %s in netns %s", list, id, ns.Path)
	}

	out, err := c.exec("nc", "-l", "-p", runcDenied)
	if err == nil || !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("nc -l -p %s in the container: %v, output %q; want bind: Operation not permitted", runcDenied, err, out)
	}
	c.execDetached(t, "sockprobe", "listen", "-addr", "0.0.0.0:"+runcMappedFrom)
	waitListening(t, ns, runcMappedTo, "10.77.0.2:"+runcMappedTo)

	// An address the container's namespace does not have is refused
	// before the container starts.
	bad := "pc-hook-ns-bad-" + testenv.Suffix()
	_, err = e.create(bad, e.bundle(bundleOptions{
		args:        []string{"sleep", "100"},
		annotations: map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["10.77.0.3"]}`},
		netns:       ns.Path,
	}))
	wantMsg := "portcullis-hook: container " + bad + ": address 10.77.0.3 is not configured in network namespace"
	if err == nil || !strings.Contains(err.Error(), wantMsg) {
		t.Fatalf("runc create with an address not in the namespace: %v; want %q", err, wantMsg)
	}
	if got := attachmentIDs(e.attachments()); !slices.Equal(got, []string{id}) {
		t.Fatalf("after the refused start: attachments %v, want [%s]", got, id)
	}

	c.stop(t)
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after runc delete: attachments %v", attachmentIDs(got))
	}
}

// TestRuncHooksDFile runs a container with the hook placed from
// conf/hooks.d/portcullis.json as podman and CRI-O would place it: one
// command line ("auto") at both stages, for annotated containers only.
func TestRuncHooksDFile(t *testing.T) {
	e := newRuncEnv(t)
	var file hooksDFile
	readJSON(t, filepath.Join(testenv.RepoRoot(t), "conf", "hooks.d", "portcullis.json"), &file)
	if file.Version != "1.0.0" || !slices.Equal(file.Stages, []string{"createRuntime", "poststop"}) {
		t.Fatalf("hooks.d file: version %q stages %v", file.Version, file.Stages)
	}
	matches := func(key string) bool {
		for k, v := range file.When.Annotations {
			if regexp.MustCompile(k).MatchString(key) && regexp.MustCompile(v).MatchString("{}") {
				return true
			}
		}
		return false
	}
	for _, key := range []string{ocihook.AnnotationPolicy, ocihook.AnnotationPolicyFile, ocihook.AnnotationPolicyName} {
		if !matches(key) {
			t.Fatalf("hooks.d file does not select containers annotated %s", key)
		}
	}
	if matches("io.portcullisX.policy") || matches("org.example") {
		t.Fatal("hooks.d file selects containers without portcullis annotations")
	}

	id := "pc-hook-hooksd-" + testenv.Suffix()
	c := e.start(id, e.bundle(bundleOptions{
		args:        []string{"sockprobe", "listen", "-addr", "0.0.0.0:" + runcPort, "-name", id},
		annotations: map[string]string{ocihook.AnnotationPolicy: runcPolicy("127.0.0.23")},
		hooksD:      &file,
	}))
	waitListening(t, nil, runcPort, "127.0.0.23:"+runcPort)
	if got := attachmentIDs(e.attachments()); !slices.Equal(got, []string{id}) {
		t.Fatalf("attachments %v, want [%s]", got, id)
	}
	c.stop(t)
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after runc delete: attachments %v", attachmentIDs(got))
	}
}

// TestContainerdHookInSpec runs a container through containerd 1.6 (`ctr run
// --config`, its own containerd with its own root and socket) whose spec
// names the hook: containerd's runc shim runs it at create and at task
// delete, exactly as runc does.
func TestContainerdHookInSpec(t *testing.T) {
	e := newRuncEnv(t)
	_, ctr := startContainerd(t)
	id := "pc-hook-ctrd-" + testenv.Suffix()
	bundle := e.bundle(bundleOptions{
		args:        []string{"sockprobe", "listen", "-addr", "0.0.0.0:" + runcPort, "-name", id},
		annotations: map[string]string{ocihook.AnnotationPolicy: runcPolicy("127.0.0.24")},
	})
	// containerd writes the spec into a bundle of its own: the rootfs
	// path must be absolute.
	var spec specs.Spec
	readJSON(t, filepath.Join(bundle, "config.json"), &spec)
	spec.Root.Path = filepath.Join(bundle, "rootfs")
	writeJSON(t, filepath.Join(bundle, "config.json"), &spec)

	t.Cleanup(func() {
		ctr("task", "kill", "-s", "KILL", id)
		ctr("task", "rm", "-f", id)
		ctr("container", "rm", id)
	})
	if out, err := ctr("run", "-d", "--config", filepath.Join(bundle, "config.json"), id); err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	waitListening(t, nil, runcPort, "127.0.0.24:"+runcPort)
	if got := greeting(t, "127.0.0.24:"+runcPort); got != id {
		t.Fatalf("127.0.0.24:%s answers %q", runcPort, got)
	}
	if got := attachmentIDs(e.attachments()); !slices.Equal(got, []string{id}) {
		t.Fatalf("attachments %v, want [%s]", got, id)
	}

	ctr("task", "kill", "-s", "KILL", id)
	for i := 0; ; i++ {
		out, _ := ctr("task", "ls")
		if strings.Contains(out, "STOPPED") {
			break
		}
		if i == 100 {
			t.Fatalf("task %s did not stop:\n%s", id, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := ctr("task", "rm", id); err != nil {
		t.Fatalf("ctr task rm: %v\n%s", err, out)
	}
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after ctr task rm: attachments %v", attachmentIDs(got))
	}
}

// TestRuncNoAnnotation: the hook leaves a container without portcullis
// annotations alone, so it can be installed for every container.
func TestRuncNoAnnotation(t *testing.T) {
	e := newRuncEnv(t)
	id := "pc-hook-plain-" + testenv.Suffix()
	c := e.start(id, e.bundle(bundleOptions{args: []string{"echo", "plain container ran"}}))
	for i := 0; !strings.Contains(c.output(t), "plain container ran"); i++ {
		if i == 100 {
			t.Fatalf("container output %q", c.output(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.stop(t)
	if _, err := os.Stat(e.stateDir); !os.IsNotExist(err) {
		t.Fatalf("the hook loaded state for a container without annotations: %v", err)
	}
}

// TestRuncHookBadInput: each bad input makes the hook exit non-zero with
// one line on stderr that names the problem, attaches nothing, and makes
// runc refuse the container with that message.
func TestRuncHookBadInput(t *testing.T) {
	e := newRuncEnv(t)
	// A live process in a cgroup of its own, so that a hook which got
	// past the bad input would have something to attach.
	cg := testenv.Cgroup(t, "hook-bad")
	proc := testenv.Start(t, cg, exec.Command("sleep", "1000"))
	pid := proc.Cmd.Process.Pid
	policyDir := t.TempDir()

	withAnnotations := func(ann map[string]string) string {
		dir := t.TempDir()
		writeJSON(t, filepath.Join(dir, "config.json"), &specs.Spec{Version: specs.Version, Annotations: ann})
		return dir
	}
	stateJSON := func(bundle string) string {
		data, _ := json.Marshal(specs.State{Version: specs.Version, ID: "bad", Status: specs.StateCreating, Pid: pid, Bundle: bundle})
		return string(data)
	}
	for _, tc := range []struct {
		name, stage, stdin, want string
	}{
		{"no stage", "", stateJSON(t.TempDir()), "portcullis-hook: no stage given"},
		{"unknown stage", "poststart", stateJSON(t.TempDir()), `portcullis-hook: unknown stage "poststart"`},
		{"malformed state", "createRuntime", `{"id": "bad", "pid": `, "portcullis-hook: container state on stdin is not valid JSON"},
		{"missing bundle", "createRuntime", stateJSON("/nonexistent/bundle"),
			"portcullis-hook: container bad: read bundle config: open /nonexistent/bundle/config.json: no such file or directory"},
		{"invalid policy", "createRuntime", stateJSON(withAnnotations(map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["127.0.0.300"]}`})),
			`portcullis-hook: container bad: annotation io.portcullis.policy: invalid policy: addresses[0]: "127.0.0.300" is not an IP address`},
		{"policy file not found", "createRuntime", stateJSON(withAnnotations(map[string]string{ocihook.AnnotationPolicyFile: "/nonexistent/policy.json"})),
			"portcullis-hook: container bad: annotation io.portcullis.policy-file: read policy: open /nonexistent/policy.json: no such file or directory"},
		{"named policy not found", "createRuntime", stateJSON(withAnnotations(map[string]string{ocihook.AnnotationPolicyName: "web"})),
			"portcullis-hook: container bad: annotation io.portcullis.policy-name: policy \"web\": read policy: open " + policyDir + "/web.json: no such file or directory"},
		{"address not on host", "createRuntime", stateJSON(withAnnotations(map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["192.0.2.77"]}`})),
			"portcullis-hook: container bad: address 192.0.2.77 is not configured on this host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(e.hook)
			if tc.stage != "" {
				cmd.Args = append(cmd.Args, tc.stage)
			}
			cmd.Env = append(os.Environ(), "PORTCULLIS_POLICIES_DIR="+policyDir)
			cmd.Stdin = strings.NewReader(tc.stdin)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("hook exited with %v, want a non-zero status", err)
			}
			msg := stderr.String()
			if !strings.HasPrefix(msg, tc.want) || strings.Count(msg, "\n") != 1 || stdout.Len() != 0 {
				t.Fatalf("stderr %q, stdout %q; want one line starting %q", msg, stdout.String(), tc.want)
			}
			if got := e.attachments(); len(got) != 0 {
				t.Fatalf("attachments after a failed hook: %v", attachmentIDs(got))
			}
			if out := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); strings.TrimSpace(out) != "" {
				t.Fatalf("programs attached to %s after a failed hook:\n%s", cg.Path, out)
			}
		})
	}

	// Through runc: the start is refused with the hook's message, and
	// neither a container nor an attachment is left.
	policyFile := filepath.Join(t.TempDir(), "missing.json")
	for _, ann := range []map[string]string{
		{ocihook.AnnotationPolicy: `{"allowedPorts": ["0"]}`},
		{ocihook.AnnotationPolicyFile: policyFile},
	} {
		id := "pc-hook-bad-" + testenv.Suffix()
		_, err := e.create(id, e.bundle(bundleOptions{args: []string{"sleep", "100"}, annotations: ann}))
		want := map[bool]string{
			true:  `annotation io.portcullis.policy: invalid policy: allowedPorts[0]: port range "0": "0" is not a port (1-65535)`,
			false: "annotation io.portcullis.policy-file: read policy: open " + policyFile + ": no such file or directory",
		}[ann[ocihook.AnnotationPolicy] != ""]
		if err == nil || !strings.Contains(err.Error(), "portcullis-hook: container "+id+": "+want) {
			t.Fatalf("runc create with %v: %v; want the hook's message %q", ann, err, want)
		}
		if out, _ := e.runc("list", "-q"); strings.TrimSpace(out) != "" {
			t.Fatalf("runc left containers after a refused start: %q", out)
		}
		if got := e.attachments(); len(got) != 0 {
			t.Fatalf("attachments after a refused start: %v", attachmentIDs(got))
		}
	}

	// poststop is idempotent: an unknown container, a missing bundle and
	// a second run all succeed.
	for i := 0; i < 2; i++ {
		cmd := exec.Command(e.hook, "poststop")
		cmd.Stdin = strings.NewReader(`{"ociVersion": "1.0.2", "id": "gone", "status": "stopped", "bundle": "/nonexistent/bundle"}`)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("poststop of a container that is gone: %v\n%s", err, out)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
