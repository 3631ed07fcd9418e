package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestAttachShowsTheAttachment(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "cli")
	pol := writeFile(t, "p.json", `{"addresses": ["127.0.0.2"], "allowedPorts": ["18000-18010"], "portMappings": [{"containerPort": 80, "hostPort": 18080}]}`)
	out := mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", pol, "--id", "web")
	for _, want := range []string{"web", cg.Path, "127.0.0.2", "18000-18010", "80->18080/tcp", "portcullisctl"} {
		if !strings.Contains(out, want) {
			t.Errorf("attach output lacks %q:\n%s", want, out)
		}
	}
	if links := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); !strings.Contains(links, "bind4") || !strings.Contains(links, "connect6") {
		t.Errorf("bpftool does not show the programs on the cgroup:\n%s", links)
	}
}

func TestAttachDefaultsIDToCgroupName(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "named")
	pol := writeFile(t, "p.json", `{}`)
	// Relative to the cgroup v2 mount.
	rel := cg.Path[strings.LastIndex(cg.Path, "/")+1:]
	out := mustRun(t, "attach", "--state-dir", dir, "--cgroup", rel, "--policy", pol)
	if !strings.Contains(out, rel+"  ") {
		t.Errorf("id is not the cgroup's name:\n%s", out)
	}
}

func TestAttachErrorsSayWhatToFix(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "bad")
	good := writeFile(t, "good.json", `{}`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cgroup", cg.Path + "-missing", "--policy", good}, "does not exist"},
		{[]string{"--cgroup", cg.Path, "--policy", writeFile(t, "bad.json", `{"addresses": [`)}, "malformed JSON"},
		{[]string{"--cgroup", cg.Path, "--policy", writeFile(t, "unknown.json", `{"ports": []}`)}, `unknown field "ports"`},
		{[]string{"--cgroup", cg.Path, "--policy", writeFile(t, "range.json", `{"allowedPorts": ["9-1"]}`)}, "allowedPorts[0]"},
		{[]string{"--cgroup", cg.Path, "--policy", writeFile(t, "addr.json", `{"addresses": ["10.0.0.0/8"]}`)}, "is a prefix"},
		{[]string{"--cgroup", cg.Path, "--policy", writeFile(t, "absent.json", `{"addresses": ["192.0.2.77"]}`)}, "192.0.2.77 is not configured on this host"},
		{[]string{"--cgroup", cg.Path, "--policy", "/nonexistent.json"}, "no such file"},
		{[]string{"--policy", good}, `required flag(s) "cgroup"`},
	} {
		out, err := run(t, append([]string{"attach", "--state-dir", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("attach %v: %v (%s), want an error containing %q", tc.args, err, out, tc.want)
		}
	}
	if out := mustRun(t, "status", "--state-dir", dir); !strings.Contains(out, "0 attachments") && !strings.Contains(out, "not loaded") {
		t.Errorf("failed attaches left something:\n%s", out)
	}
}

// TestAttachRefusesTheRootCgroup: however the root is spelled, attach
// refuses it with the message the CNI plugin and the hook give, and
// nothing is attached to it.
func TestAttachRefusesTheRootCgroup(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "root19")
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "root")
	os.Symlink(mount, link)
	pol := writeFile(t, "p.json", `{}`)
	before := testenv.Run(t, "bpftool", "cgroup", "show", mount)
	for _, path := range []string{".", mount, mount + "/", filepath.Base(cg.Path) + "/..", cg.Path + "/../", link} {
		_, err := run(t, "attach", "--state-dir", dir, "--cgroup", path, "--policy", pol)
		if err == nil || !strings.Contains(err.Error(), "is the root of cgroup v2 ("+mount+"): a policy there would apply to every process on the host") {
			t.Errorf("attach --cgroup %q: %v, want the root refused", path, err)
		}
	}
	if after := testenv.Run(t, "bpftool", "cgroup", "show", mount); after != before {
		t.Errorf("programs on the root cgroup changed:\n%s\nto\n%s", before, after)
	}
	if out := mustRun(t, "status", "--state-dir", dir); !strings.Contains(out, "not loaded") {
		t.Errorf("refused attaches loaded the state or left something:\n%s", out)
	}
}
