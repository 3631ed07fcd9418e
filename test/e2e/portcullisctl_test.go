// Package e2e drives the built binaries the way users do: portcullisctl
// from a shell, the CNI plugin from a runtime, the OCI hook from runc.
package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestPortcullisctlAttachAnyCgroup attaches a policy to a plain cgroup with
// the portcullisctl binary, runs busybox-static in it, and detaches.
func TestPortcullisctlAttachAnyCgroup(t *testing.T) {
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	testenv.RequireCommand(t, "bpftool", "bpftool")
	dir := testenv.StateDir(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	ns := testenv.NewNetNS(t)
	cg := testenv.Cgroup(t, "job")
	policyFile := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(policyFile, []byte(`{"addresses": ["127.0.0.2"], "allowedPorts": ["18000-18010"]}`), 0o644)

	ctlRun := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctl, append(args, "--state-dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portcullisctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ctlRun("attach", "--cgroup", cg.Path, "--policy", policyFile, "--id", "job", "--netns", ns.Path)

	testenv.Start(t, cg, ns.Command(busybox, "nc", "-l", "-p", "18001"))
	var got []string
	for i := 0; i < 100 && len(got) == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		got = ns.Listening(t, "tcp", 18001)
	}
	if len(got) != 1 || got[0] != "[::ffff:127.0.0.2]:18001" {
		t.Fatalf("busybox nc -l -p 18001 listens on %v, want [::ffff:127.0.0.2]:18001", got)
	}
	refused := testenv.Start(t, cg, ns.Command(busybox, "nc", "-l", "-p", "8080"))
	refused.Wait(t, 5*time.Second)
	if !strings.Contains(refused.Stderr(), "Operation not permitted") {
		t.Fatalf("bind outside allowedPorts: stderr %q, want EPERM", refused.Stderr())
	}

	var status struct {
		Attachments []struct {
			ID       string `json:"id"`
			CgroupID uint64 `json:"cgroupId"`
		} `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(ctlRun("status", "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Attachments) != 1 || status.Attachments[0].ID != "job" || status.Attachments[0].CgroupID != cg.ID {
		t.Fatalf("status: %+v", status)
	}

	ctlRun("detach", "--cgroup", cg.Path)
	if out := testenv.Run(t, "bpftool", "cgroup", "show", cg.Path); strings.TrimSpace(out) != "" {
		t.Fatalf("programs left after detach:\n%s", out)
	}
	ctlRun("unload")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state left after unload: %v", err)
	}
}
