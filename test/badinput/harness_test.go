// Package badinput drives the three real binaries — the CNI plugin, the
// OCI hook and portcullisctl — with hundreds of malformed inputs generated
// from valid ones, and checks for each that the front end refuses it in its
// own error format, within its deadline, without a panic, and leaves
// nothing behind. A few valid inputs go through the same harness and must
// succeed, so the battery cannot pass by refusing everything.
package badinput

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/cni"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// frontEnd names a binary and the error format it owes its caller.
type frontEnd int

const (
	plugin frontEnd = iota // CNI: the spec's error JSON on stdout, non-zero exit
	hook                   // OCI hook: non-zero exit, one line on stderr
	ctl                    // portcullisctl: exit 1, one line on stderr
)

func (f frontEnd) String() string { return [...]string{"cni", "hook", "ctl"}[f] }

// step is one run of a binary.
type step struct {
	bin  frontEnd
	args []string
	env  map[string]string
	// stdin is written and closed; stdinFile, when set, is opened and
	// given instead (/dev/zero); openStdin gives a pipe never closed.
	stdin     []byte
	stdinFile string
	openStdin bool
	// ok: the step must succeed.
	ok bool
	// want, when set, must appear in the error.
	want string
	// deadline is how long the step may take (default: stepDeadline).
	deadline time.Duration
}

// badInput is one case: a malformed run, or a valid sequence that must
// succeed and, once its last step ran, leave the state as it found it.
type badInput struct {
	name  string
	steps []step
	// locked runs the steps while the test holds the state lock.
	locked bool
}

// stepDeadline is what a step may take: the lock deadline, and a margin
// for a loaded machine. (A bad input is refused in milliseconds; the
// battery checks that none hangs.)
const stepDeadline = state.DefaultLockTimeout + 5*time.Second

// fixture is one worker's world: a state, a container (cgroup, network
// namespace, process), a bundle, a services.d and a log outside the
// snapshot.
type fixture struct {
	n                      int
	root                   string // the cgroup v2 mount
	progIDs                map[int]bool
	stateDir, work, log    string
	servicesDir, bundle    string
	policiesDir            string
	ns                     *testenv.NetNS
	cg                     cgroup.Cgroup
	pid, deadPid           int
	bins                   map[frontEnd]string
	addr, otherAddr, front string
}

// run executes one step and returns what the caller sees.
func (f *fixture) run(t *testing.T, s step) (stdout, stderr string, code int, took time.Duration, err error) {
	deadline := s.deadline
	if deadline == 0 {
		deadline = stepDeadline
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bins[s.bin], s.args...)
	cmd.Dir = f.work // a stray relative file would land in the snapshot
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PORTCULLIS_STATE_DIR=" + f.stateDir, "PORTCULLIS_SERVICES_DIR=" + f.servicesDir}
	if s.bin == hook {
		cmd.Env = append(cmd.Env, "PORTCULLIS_POLICIES_DIR="+f.policiesDir)
	}
	for k, v := range s.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	switch {
	case s.stdinFile != "":
		file, ferr := os.Open(s.stdinFile)
		if ferr != nil {
			t.Fatal(ferr)
		}
		defer file.Close()
		cmd.Stdin = file
	case s.openStdin:
		r, w, perr := os.Pipe()
		if perr != nil {
			t.Fatal(perr)
		}
		defer r.Close()
		defer w.Close()
		cmd.Stdin = r
	default:
		cmd.Stdin = bytes.NewReader(s.stdin)
	}
	start := time.Now()
	err = cmd.Run()
	took = time.Since(start)
	code = cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %v: %w", took, ctx.Err())
	}
	return out.String(), errOut.String(), code, took, err
}

// check runs a step and says what is wrong with how it ended.
func (f *fixture) check(t *testing.T, s step) error {
	stdout, stderr, code, took, err := f.run(t, s)
	deadline := s.deadline
	if deadline == 0 {
		deadline = stepDeadline
	}
	desc := fmt.Sprintf("%s %q: exit %d after %v\nstdout: %s\nstderr: %s", s.bin, s.args, code, took.Round(time.Millisecond), stdout, stderr)
	if strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "fatal error") {
		return fmt.Errorf("crashed: %s", desc)
	}
	if took > deadline {
		return fmt.Errorf("took longer than its %v deadline: %s", deadline, desc)
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("did not exit normally (%v): %s", err, desc)
	}
	if s.ok {
		if code != 0 {
			return fmt.Errorf("a valid input failed: %s", desc)
		}
		return nil
	}
	if code == 0 {
		return fmt.Errorf("a bad input succeeded: %s", desc)
	}
	var msg string
	switch s.bin {
	case plugin:
		var e struct {
			CNIVersion string `json:"cniVersion"`
			Code       uint   `json:"code"`
			Msg        string `json:"msg"`
			Details    string `json:"details"`
		}
		dec := json.NewDecoder(strings.NewReader(stdout))
		dec.DisallowUnknownFields()
		if derr := dec.Decode(&e); derr != nil || dec.More() {
			return fmt.Errorf("stdout is not one CNI error object (%v): %s", derr, desc)
		}
		if !slices.Contains(cni.VersionInfo.SupportedVersions(), e.CNIVersion) || e.Code == 0 || e.Msg == "" {
			return fmt.Errorf("CNI error lacks a supported cniVersion, a code or a msg: %s", desc)
		}
		msg = e.Msg
	case hook, ctl:
		prefix := "portcullis-hook: "
		if s.bin == ctl {
			prefix = "portcullisctl: "
			if code != 1 {
				return fmt.Errorf("exit status %d, want 1: %s", code, desc)
			}
		}
		if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") || !strings.HasPrefix(stderr, prefix) {
			return fmt.Errorf("stderr is not exactly one line starting %q: %s", prefix, desc)
		}
		msg = stderr
	}
	if s.want != "" && !strings.Contains(msg, s.want) {
		return fmt.Errorf("error does not contain %q: %s", s.want, desc)
	}
	return nil
}

// snapshot is everything an input could leave behind: every file under
// the state directory and the worker's directory (bundle, services.d,
// working directory), every entry of every pinned hash map (records,
// policies, port mappings, services...), and the programs on the
// container's cgroup. LRU caches and counter arrays are left out: they
// change with traffic, not with configuration.
func (f *fixture) snapshot(t *testing.T) string {
	var b strings.Builder
	for _, root := range []string{f.stateDir, f.work} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				fmt.Fprintf(&b, "%s: %v\n", path, err)
				return nil
			}
			info, _ := d.Info()
			size := int64(0)
			if info != nil && d.Type().IsRegular() && !strings.HasPrefix(path, f.stateDir) {
				size = info.Size()
			}
			fmt.Fprintf(&b, "%s %v %d\n", path, d.Type(), size)
			return nil
		})
	}
	paths, _ := filepath.Glob(filepath.Join(f.stateDir, "maps", "*"))
	for _, path := range paths {
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		if m.Type() == ebpf.Hash {
			var entries []string
			k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
			it := m.Iterate()
			for it.Next(&k, &v) {
				sum := sha256.Sum256(append(append([]byte{}, k...), v...))
				entries = append(entries, hex.EncodeToString(sum[:8]))
			}
			if err := it.Err(); err != nil {
				t.Fatalf("iterate %s: %v", path, err)
			}
			sort.Strings(entries)
			fmt.Fprintf(&b, "map %s: %s\n", filepath.Base(path), strings.Join(entries, " "))
		}
		m.Close()
	}
	fmt.Fprintf(&b, "programs: %s\n", cgroupPrograms(t, f.cg.Path))
	fmt.Fprintf(&b, "this state's programs on the root: %v\n", f.ownOnRoot(t))
	return b.String()
}

// cgroupPrograms lists the programs attached to a cgroup, by bpftool.
func cgroupPrograms(t *testing.T, path string) string {
	out, err := exec.Command("bpftool", "cgroup", "show", path).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool cgroup show %s: %v\n%s", path, err, out)
	}
	return strings.TrimSpace(string(out))
}

// ownOnRoot lists the programs of the fixture's state attached to the
// cgroup v2 root. Only the state's own count: other tests on this kernel
// are not the battery's business.
func (f *fixture) ownOnRoot(t *testing.T) []int {
	out, err := exec.Command("bpftool", "-j", "cgroup", "show", f.root).Output()
	if err != nil {
		t.Fatalf("bpftool cgroup show %s: %v", f.root, err)
	}
	var progs []struct {
		ID int `json:"id"`
	}
	if len(bytes.TrimSpace(out)) > 0 {
		if err := json.Unmarshal(out, &progs); err != nil {
			t.Fatalf("bpftool cgroup show %s: %v\n%s", f.root, err, out)
		}
	}
	var own []int
	for _, p := range progs {
		if f.progIDs[p.ID] {
			own = append(own, p.ID)
		}
	}
	return own
}

// holdLock takes the state lock the way a stuck writer would.
func (f *fixture) holdLock(t *testing.T) func() {
	file, err := os.Open(f.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(file.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { file.Close() }
}

// runInput runs one input and returns what is wrong, or nil.
func (f *fixture) runInput(t *testing.T, in badInput) error {
	before := f.snapshot(t)
	if in.locked {
		defer f.holdLock(t)()
	}
	for i, s := range in.steps {
		if err := f.check(t, s); err != nil {
			return fmt.Errorf("step %d: %w", i, err)
		}
		if s.ok && i == 0 && len(in.steps) > 1 && f.snapshot(t) == before {
			return fmt.Errorf("step 0 succeeded but changed nothing: the valid input is not applied")
		}
	}
	if after := f.snapshot(t); after != before {
		return fmt.Errorf("left something behind:\n%s", diff(before, after))
	}
	return nil
}

// diff lists the lines of after that are not in before and the other way.
func diff(before, after string) string {
	b, a := strings.Split(before, "\n"), strings.Split(after, "\n")
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}
