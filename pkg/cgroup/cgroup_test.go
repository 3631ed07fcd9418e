package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	hybrid := "12:pids:/user.slice\n1:name=systemd:/user.slice/x\n0::/system.slice/ctr-1\n"
	if got, err := ParseProcCgroup(hybrid); err != nil || got != "/system.slice/ctr-1" {
		t.Errorf("hybrid: %q, %v", got, err)
	}
	if _, err := ParseProcCgroup("3:cpu:/a\n"); err == nil || !strings.Contains(err.Error(), "0::") {
		t.Errorf("v1 only: want an error naming the 0:: entry, got %v", err)
	}
}

func TestResolve(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to create a cgroup")
	}
	mount, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(mount, "portcullis-test-resolve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	rel := strings.TrimPrefix(dir, mount)
	for _, path := range []string{dir, rel, strings.TrimPrefix(rel, "/")} {
		cg, err := Resolve(path)
		if err != nil || cg.Path != dir || cg.ID == 0 || !cg.Exists() {
			t.Errorf("Resolve(%q) = %+v, %v", path, cg, err)
		}
	}
	if _, err := Resolve(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing cgroup: %v", err)
	}
	if _, err := Resolve("/tmp"); err == nil || !strings.Contains(err.Error(), "not a cgroup v2 directory") {
		t.Errorf("non-cgroup directory: %v", err)
	}
	self, err := OfPID(os.Getpid())
	if err != nil || !self.Exists() {
		t.Errorf("OfPID(self) = %+v, %v", self, err)
	}
}

// TestRefuseRoot: every spelling of the v2 root is the root, and is
// refused; a child is not.
func TestRefuseRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to create a cgroup")
	}
	mount, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(mount, "portcullis-test-root19-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	link := filepath.Join(t.TempDir(), "root")
	os.Symlink(mount, link)
	child := filepath.Base(dir)
	for _, path := range []string{".", mount, mount + "/", mount + "//", child + "/..", dir + "/..", "./" + child + "/../.", link, link + "/"} {
		cg, err := Resolve(path)
		if err != nil {
			t.Errorf("Resolve(%q): %v", path, err)
			continue
		}
		err = RefuseRoot(cg)
		if err == nil || !strings.Contains(err.Error(), "is the root of cgroup v2 ("+mount+"): a policy there would apply to every process on the host") {
			t.Errorf("RefuseRoot(Resolve(%q) = %s): %v", path, cg.Path, err)
		}
	}
	for _, path := range []string{dir, child, child + "/", "./" + child} {
		cg, err := Resolve(path)
		if err != nil || RefuseRoot(cg) != nil {
			t.Errorf("Resolve(%q) = %+v, %v; RefuseRoot: %v", path, cg, err, RefuseRoot(cg))
		}
	}
}
