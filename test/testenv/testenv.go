// Package testenv builds what portcullis' integration and end-to-end tests
// run in: their own bpffs state directory, cgroups under the v2 mount,
// network namespaces, and processes started inside a cgroup and a
// namespace. Every helper registers its cleanup; a missing requirement
// fails the test with its name, it never skips.
package testenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// RequireRoot fails the test unless it runs as root: the tests load BPF
// programs and make cgroups and namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run make test as root")
	}
}

// RequireCommand fails the test when a program is not installed.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (apt-get install %s; .ci/run installs it)", name, pkg)
	}
	return path
}

// Suffix returns a short random string for names.
func Suffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// StateDir returns a fresh bpffs state directory for one test and sets
// PORTCULLIS_STATE_DIR for the tools the test runs. Cleanup detaches
// everything and unloads.
func StateDir(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dir := filepath.Join(filepath.Dir(state.DefaultDir), "portcullis-test-"+Suffix())
	t.Setenv("PORTCULLIS_STATE_DIR", dir)
	t.Cleanup(func() {
		if err := state.Unload(dir, true); err != nil {
			t.Errorf("unload test state %s: %v", dir, err)
		}
	})
	return dir
}

// Cgroup creates an empty cgroup under the v2 mount. Cleanup kills what
// is left in it and removes it (and any children the test made).
func Cgroup(t testing.TB, name string) cgroup.Cgroup {
	t.Helper()
	RequireRoot(t)
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(mount, "portcullis-test-"+name+"-"+Suffix())
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { RemoveCgroup(t, path) })
	cg, err := cgroup.Resolve(path)
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

// ChildCgroup creates a cgroup nested below parent.
func ChildCgroup(t testing.TB, parent cgroup.Cgroup, name string) cgroup.Cgroup {
	t.Helper()
	path := filepath.Join(parent.Path, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	cg, err := cgroup.Resolve(path)
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

// RemoveCgroup kills the processes of a cgroup tree and removes it.
func RemoveCgroup(t testing.TB, path string) {
	var dirs []string
	filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 50; try++ {
			if data, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(data)) {
					var n int
					fmt.Sscan(pid, &n)
					syscall.Kill(n, syscall.SIGKILL)
				}
			}
			if err := os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// NetNS is a network namespace made by a test, with lo up.
type NetNS struct {
	Name string
	Path string
}

// NewNetNS creates a named network namespace (`ip netns add`) and brings
// lo up. Tests enter it with nsenter --net: `ip netns exec` would remount
// /sys and hide the cgroup and bpffs mounts.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "ip", "iproute2")
	name := "pc-test-" + Suffix()
	Run(t, "ip", "netns", "add", name)
	n := &NetNS{Name: name, Path: "/run/netns/" + name}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// IP runs `ip -n NAME args...`.
func (n *NetNS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a command inside the namespace and returns its output.
func (n *NetNS) Exec(t testing.TB, argv ...string) string {
	t.Helper()
	return Run(t, "nsenter", append([]string{"--net=" + n.Path, "--"}, argv...)...)
}

// Command returns a command that runs inside the namespace; nil n means
// the caller's namespace.
func (n *NetNS) Command(argv ...string) *exec.Cmd {
	if n == nil {
		return exec.Command(argv[0], argv[1:]...)
	}
	return exec.Command("nsenter", append([]string{"--net=" + n.Path, "--"}, argv...)...)
}

// Listening returns the local address of the listening TCP (or bound UDP)
// socket on port, as `ss` shows it from outside the container.
func (n *NetNS) Listening(t testing.TB, proto string, port uint16) []string {
	t.Helper()
	flag := "-Hltn"
	if proto == "udp" {
		flag = "-Hlun"
	}
	out := n.Exec(t, "ss", flag, fmt.Sprintf("sport = :%d", port))
	var addrs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 4 {
			addrs = append(addrs, fields[3])
		}
	}
	return addrs
}

// Run runs a command and fails the test if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Proc is a process a test started, with its stdout read line by line.
type Proc struct {
	Cmd *exec.Cmd

	mu      sync.Mutex
	lines   []string // stdout lines not yet taken by Line or Output
	eof     bool     // stdout is read to its end
	stderr  strings.Builder
	changed chan struct{} // closed (and replaced) when lines or eof change
	done    chan struct{} // closed once the process exited and its output is read
}

// exitGrace bounds how long the output of a process that exited is still
// read: a descendant (a daemon it started) may hold its stdout open, so
// EOF may never come. What the process itself wrote is already in the
// pipe when it exits, and is read in far less.
const exitGrace = 2 * time.Second

// Start starts cmd inside the cgroup (CLONE_INTO_CGROUP, so it never runs
// outside it). A zero cg starts it where the test runs. Cleanup kills it.
//
// Its stdout and stderr are pipes of the test's own, not os/exec's: Wait
// closes the pipes it made as soon as the process exits, which loses the
// last lines of a fast process if they were not read yet ("it is incorrect
// to call Wait before all reads from the pipe have completed"). Here Wait
// only reaps; the readers run to EOF on their own.
func Start(t testing.TB, cg cgroup.Cgroup, cmd *exec.Cmd) *Proc {
	t.Helper()
	if cg.Path != "" {
		dir, err := os.Open(cg.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	p := &Proc{Cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	err = cmd.Start()
	outW.Close() // the child holds its own copies
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		scanner := bufio.NewScanner(outR)
		scanner.Buffer(make([]byte, 64*1024), 1024*1024)
		for scanner.Scan() {
			p.update(func() { p.lines = append(p.lines, scanner.Text()) })
		}
		p.update(func() { p.eof = true })
	}()
	go func() {
		defer readers.Done()
		buf := make([]byte, 4096)
		for {
			n, err := errR.Read(buf)
			p.update(func() { p.stderr.Write(buf[:n]) })
			if err != nil {
				return
			}
		}
	}()
	go func() {
		cmd.Wait()
		deadline := time.Now().Add(exitGrace)
		outR.SetReadDeadline(deadline)
		errR.SetReadDeadline(deadline)
		readers.Wait()
		outR.Close()
		errR.Close()
		close(p.done)
	}()
	t.Cleanup(p.Kill)
	return p
}

// update changes the process' output under its lock and wakes waiters.
func (p *Proc) update(change func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	change()
	close(p.changed)
	p.changed = make(chan struct{})
}

// Kill stops the process and waits for it and its output.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// Wait waits for the process to exit and its output to be read.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%v did not exit within %v; stderr: %s", p.Cmd.Args, timeout, p.Stderr())
	}
}

// Stderr returns what the process wrote to stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Line returns the next stdout line, failing the test after timeout.
func (p *Proc) Line(t testing.TB, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		if len(p.lines) > 0 {
			line := p.lines[0]
			p.lines = p.lines[1:]
			p.mu.Unlock()
			return line
		}
		eof, changed := p.eof, p.changed
		p.mu.Unlock()
		if eof {
			t.Fatalf("%v exited without output; stderr: %s", p.Cmd.Args, p.Stderr())
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%v printed nothing within %v; stderr: %s", p.Cmd.Args, timeout, p.Stderr())
		}
	}
}

// Output waits for the process to exit and returns the stdout lines that
// Line has not taken.
func (p *Proc) Output(t testing.TB, timeout time.Duration) string {
	t.Helper()
	p.Wait(t, timeout)
	p.mu.Lock()
	defer p.mu.Unlock()
	out := strings.Join(p.lines, "\n")
	p.lines = nil
	return out
}

// ProbeResult is one JSON line of sockprobe.
type ProbeResult struct {
	OK    bool   `json:"ok"`
	Event string `json:"event"`
	Local string `json:"local"`
	Peer  string `json:"peer"`
	// PeerName is getpeername on a connected UDP socket (Peer is the
	// reply's source there).
	PeerName string `json:"peername"`
	Reply    string `json:"reply"`
	// Mark is a connected client's SO_MARK.
	Mark  uint32 `json:"mark"`
	Errno string `json:"errno"`
	Error string `json:"error"`
}

// ParseProbe decodes a sockprobe line.
func ParseProbe(t testing.TB, line string) ProbeResult {
	t.Helper()
	var r ProbeResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("sockprobe printed %q: %v", line, err)
	}
	return r
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binary builds one of the project's commands (e.g. "./cmd/portcullisctl",
// "./test/sockprobe") statically, once per test binary, and returns its
// path. Static means no libc: the same binary stands in for the static Go
// programs users run in containers.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "portcullis-bin-")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	binMu.Lock()
	defer binMu.Unlock()
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, output)
	}
	return out
}

var binMu sync.Mutex

// RepoRoot is the repository's top directory.
func RepoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the repository root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Attach parses doc as a policy and attaches it to the cgroup at path as id
// in the state at dir (loading it if needed); netns is where the policy's
// addresses must be. Any error fails the test.
func Attach(t testing.TB, dir, id, path, doc, netns string) *state.Attachment {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Attach(state.AttachRequest{ID: id, Cgroup: path, Policy: p, NetNS: netns})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// SetPolicy changes attachment id's policy in place to doc (JSON),
// failing the test on any error.
func SetPolicy(t testing.TB, dir, id, doc string) {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.SetPolicy(id, p); err != nil {
		t.Fatal(err)
	}
}

// Detach removes attachment id from the state at dir, failing the test on
// any error.
func Detach(t testing.TB, dir, id string) {
	t.Helper()
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Detach(id); err != nil {
		t.Fatal(err)
	}
}
