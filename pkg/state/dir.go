package state

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// BPFFSMount is where bpffs is mounted by convention. It is the only place
// portcullis mounts bpffs itself, and only when nothing is mounted there.
const BPFFSMount = "/sys/fs/bpf"

// CheckDir checks a state directory (stateDir in a CNI conf,
// PORTCULLIS_STATE_DIR, --state-dir) before anything is created or mounted
// for it, and returns it cleaned. It must be absolute and either be, or be
// about to be created, inside a bpffs mount, or lie under BPFFSMount (which
// the first load mounts when it is not bpffs yet). Anything else is
// refused: a stateDir of /etc/portcullis must never mount bpffs over /etc.
func CheckDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("state directory is empty: give a directory under " + BPFFSMount)
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("state directory %q is not an absolute path: give a directory under %s", dir, BPFFSMount)
	}
	clean := filepath.Clean(dir)
	if st, err := os.Lstat(clean); err == nil {
		if !st.IsDir() {
			return "", fmt.Errorf("state directory %s is not a directory (%s): give a directory under %s", clean, st.Mode().Type(), BPFFSMount)
		}
		if !onBPFFS(clean) {
			return "", fmt.Errorf("state directory %s is not on bpffs: give a directory under %s", clean, BPFFSMount)
		}
		return clean, nil
	}
	if onBPFFS(filepath.Dir(clean)) || (strings.HasPrefix(clean, BPFFSMount+"/") && !onBPFFS(BPFFSMount)) {
		return clean, nil
	}
	return "", fmt.Errorf("state directory %s is not on bpffs: give a directory under %s (or in another bpffs mount)", clean, BPFFSMount)
}

func onBPFFS(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.BPF_FS_MAGIC
}

// prepareParent makes sure the parent of a checked state directory is on
// bpffs: it mounts bpffs on BPFFSMount when the directory lies under it and
// nothing is mounted there, then creates the parent inside it.
func prepareParent(dir string) error {
	parent := filepath.Dir(dir)
	if onBPFFS(parent) {
		return nil
	}
	if !strings.HasPrefix(dir, BPFFSMount+"/") {
		return fmt.Errorf("state directory %s is not on bpffs: give a directory under %s", dir, BPFFSMount)
	}
	if !onBPFFS(BPFFSMount) {
		if err := unix.Mount("bpf", BPFFSMount, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("%s is not bpffs and mounting it failed: %w (mount -t bpf bpf %s)", BPFFSMount, err, BPFFSMount)
		}
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	if !onBPFFS(parent) {
		return fmt.Errorf("state directory %s is not on bpffs (%s leads out of it): give a directory under %s", dir, parent, BPFFSMount)
	}
	return nil
}

// DefaultLockTimeout is how long a tool waits for the state lock before it
// gives up. Writers hold it for milliseconds (an attach, a detach); only a
// stuck process holds it for seconds.
const DefaultLockTimeout = 10 * time.Second

// LockTimeoutEnv overrides DefaultLockTimeout (a Go duration, "30s").
const LockTimeoutEnv = "PORTCULLIS_LOCK_TIMEOUT"

// maxLockTimeout keeps the override bounded too.
const maxLockTimeout = 10 * time.Minute

// LockTimeout is $PORTCULLIS_LOCK_TIMEOUT or DefaultLockTimeout.
func LockTimeout() (time.Duration, error) {
	v := os.Getenv(LockTimeoutEnv)
	if v == "" {
		return DefaultLockTimeout, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > maxLockTimeout {
		return 0, fmt.Errorf("%s=%q: want a duration between 1ms and %v, such as 30s", LockTimeoutEnv, v, maxLockTimeout)
	}
	return d, nil
}

// Lock takes a flock on f (unix.LOCK_EX or LOCK_SH), polling without
// blocking so that it can give up after LockTimeout: a process stuck while
// holding a lock must not make every runtime's ADD or createRuntime hang.
// Every lock portcullis takes goes through it.
func Lock(f *os.File, how int) error {
	timeout, err := LockTimeout()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is locked by another process and was not released within %v (a portcullis tool is stuck: find it with fuser %s; %s waits longer)", f.Name(), timeout, f.Name(), LockTimeoutEnv)
		}
		// Jitter keeps waiting writers from polling in step.
		time.Sleep(wait + rand.N(wait))
		wait = min(2*wait, 20*time.Millisecond)
	}
}
