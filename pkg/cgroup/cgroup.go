// Package cgroup finds cgroup v2 directories: the v2 mount (also on hybrid
// hosts where it lives at /sys/fs/cgroup/unified), a cgroup's id, and the
// cgroup a process belongs to.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Mount returns the mount point of the cgroup v2 hierarchy, from
// /proc/self/mountinfo. The answer is kept while that path is still a
// cgroup2 mount: an attach asked three times, and the kernel generates
// mountinfo anew at each read.
func Mount() (string, error) {
	mountMu.Lock()
	defer mountMu.Unlock()
	var fs unix.Statfs_t
	if mountCached != "" && unix.Statfs(mountCached, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
		return mountCached, nil
	}
	path, err := readMount()
	if err == nil {
		mountCached = path
	}
	return path, err
}

var (
	mountMu     sync.Mutex
	mountCached string
)

func readMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - cgroup2 cgroup2 rw
		fields := strings.Fields(scanner.Text())
		for i, field := range fields {
			if field == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return unescapeMountPath(fields[4]), nil
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return "", err
	}
	return "", errors.New("cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

func unescapeMountPath(s string) string {
	if unq, err := strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`); err == nil {
		return unq
	}
	return s
}

// Cgroup is one cgroup v2 directory.
type Cgroup struct {
	// Path is the absolute path of the directory.
	Path string
	// ID is the cgroup id the kernel reports to BPF programs
	// (bpf_get_current_cgroup_id); it is the directory's inode number.
	ID uint64
}

// Resolve turns a path that is absolute or relative to the v2 mount into a
// Cgroup, checking that it is a directory of the v2 hierarchy.
func Resolve(path string) (Cgroup, error) {
	if path == "" {
		return Cgroup{}, errors.New("no cgroup path given")
	}
	mount, err := Mount()
	if err != nil {
		return Cgroup{}, err
	}
	// An absolute path outside the mount is read as relative to it, the
	// way /proc/PID/cgroup and runtimes write cgroup paths, unless it
	// names an existing directory elsewhere (a v1 cgroup, say).
	abs := filepath.Clean(path)
	if !strings.HasPrefix(abs+"/", mount+"/") {
		if _, err := os.Stat(abs); err != nil || !filepath.IsAbs(abs) {
			abs = filepath.Join(mount, path)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Cgroup{}, fmt.Errorf("cgroup %s does not exist (cgroup v2 is mounted at %s)", abs, mount)
		}
		return Cgroup{}, fmt.Errorf("cgroup %s: %w", abs, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(abs, &fs); err != nil {
		return Cgroup{}, fmt.Errorf("cgroup %s: %w", abs, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Cgroup{}, fmt.Errorf("%s is not a cgroup v2 directory (cgroup v2 is mounted at %s)", abs, mount)
	}
	return Cgroup{Path: abs, ID: st.Ino}, nil
}

// RefuseRoot fails for the root of the v2 hierarchy, however the path
// named it (".", "x/..", a trailing slash, a symlink: the id is compared,
// not the path). Every front end refuses it with this message: programs
// there would apply to every process on the host.
func RefuseRoot(c Cgroup) error {
	mount, err := Mount()
	if err != nil {
		return err
	}
	var root unix.Stat_t
	if err := unix.Stat(mount, &root); err != nil {
		return fmt.Errorf("cgroup v2 mount %s: %w", mount, err)
	}
	if c.ID == root.Ino {
		return fmt.Errorf("cgroup %s is the root of cgroup v2 (%s): a policy there would apply to every process on the host; give the container a cgroup of its own", c.Path, mount)
	}
	return nil
}

// Exists reports whether the cgroup directory is still there and is the
// same cgroup (a recreated directory of the same name has another id).
func (c Cgroup) Exists() bool {
	var st unix.Stat_t
	return unix.Stat(c.Path, &st) == nil && st.Ino == c.ID
}

// OfPID returns the v2 cgroup of a process: the "0::" line of
// /proc/PID/cgroup, which is present on unified and hybrid hosts alike.
func OfPID(pid int) (Cgroup, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return Cgroup{}, fmt.Errorf("cgroup of process %d: %w", pid, err)
	}
	rel, err := ParseProcCgroup(string(data))
	if err != nil {
		return Cgroup{}, fmt.Errorf("cgroup of process %d: %w", pid, err)
	}
	mount, err := Mount()
	if err != nil {
		return Cgroup{}, err
	}
	return Resolve(filepath.Join(mount, rel))
}

// ParseProcCgroup extracts the v2 path from the contents of /proc/PID/cgroup.
func ParseProcCgroup(contents string) (string, error) {
	for _, line := range strings.Split(contents, "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			if rest == "" {
				return "", errors.New("empty cgroup v2 path")
			}
			return rest, nil
		}
	}
	return "", errors.New("no cgroup v2 (0::) entry; is cgroup v2 mounted?")
}
