package state_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestStateDirMustBeOnBPFFS: a state directory outside bpffs is refused
// before anything is created or mounted, by Load and by Open alike.
func TestStateDirMustBeOnBPFFS(t *testing.T) {
	testenv.RequireRoot(t)
	tmp := t.TempDir()
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, nil, 0o600)
	fresh := testenv.StateDir(t) // on bpffs, not loaded yet
	link := fresh + "-link"
	if err := os.Symlink(tmp, link); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(link)
	mountsBefore, _ := os.ReadFile("/proc/self/mountinfo")
	for dir, want := range map[string]string{
		"":                                "state directory is empty",
		"portcullis19":                    `state directory "portcullis19" is not an absolute path`,
		"./x/../portcullis19":             "is not an absolute path",
		"/etc/portcullis19":               "state directory /etc/portcullis19 is not on bpffs",
		filepath.Join(tmp, "portcullis"):  "is not on bpffs",
		filepath.Join(tmp, "a/b/c"):       "is not on bpffs",
		"/sys/fs/bpf/../../../etc/pc19":   "state directory /etc/pc19 is not on bpffs",
		tmp:                               "state directory " + tmp + " is not on bpffs",
		file:                              "is not a directory",
		link:                              "is not a directory",
		filepath.Join(link, "portcullis"): "is not on bpffs",
		"/proc/self/fd/0":                 "is not a directory",
	} {
		if _, err := state.Load(dir); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%q): %v, want %q", dir, err, want)
		}
		if _, err := state.Open(dir, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q): %v, want %q", dir, err, want)
		}
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 1 {
		t.Errorf("refused loads created %v in %s", entries, tmp)
	}
	if _, err := os.Stat("/etc/portcullis19"); !os.IsNotExist(err) {
		t.Errorf("/etc/portcullis19: %v", err)
	}
	if mountsAfter, _ := os.ReadFile("/proc/self/mountinfo"); string(mountsAfter) != string(mountsBefore) {
		t.Errorf("refused loads changed the mounts:\n%s", mountsAfter)
	}
	// A directory about to be made on bpffs, with a trailing slash, is fine.
	if loaded, err := state.Load(fresh + "/"); err != nil || !loaded {
		t.Fatalf("Load(%s/): %v %v", fresh, loaded, err)
	}
	s, err := state.Open(fresh+"//", false)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestLockDeadline: a writer stuck holding the lock makes the others give
// up after PORTCULLIS_LOCK_TIMEOUT with an error that says so.
func TestLockDeadline(t *testing.T) {
	dir := testenv.StateDir(t)
	if _, err := state.Load(dir); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Setenv(state.LockTimeoutEnv, "300ms")
	for _, exclusive := range []bool{true, false} {
		start := time.Now()
		_, err := state.Open(dir, exclusive)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), dir+" is locked by another process and was not released within 300ms") {
			t.Errorf("Open(exclusive=%v) while locked: %v", exclusive, err)
		}
		if took < 300*time.Millisecond || took > 2*time.Second {
			t.Errorf("Open gave up after %v, want about 300ms", took)
		}
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatalf("Open once released: %v", err)
	}
	s.Close()
	for _, bad := range []string{"soon", "0", "-1s", "1h", "10"} {
		t.Setenv(state.LockTimeoutEnv, bad)
		if _, err := state.Open(dir, true); err == nil || !strings.Contains(err.Error(), "PORTCULLIS_LOCK_TIMEOUT=\""+bad+"\": want a duration between 1ms and 10m0s") {
			t.Errorf("%s=%s: %v", state.LockTimeoutEnv, bad, err)
		}
	}
}
