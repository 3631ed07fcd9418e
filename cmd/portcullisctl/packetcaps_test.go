package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestAttachWarnsAboutNetRaw: attach of a cgroup whose process keeps
// CAP_NET_RAW in its bounding set warns on stderr (packet sockets pass no
// hook) and attaches; one whose process dropped it, an empty cgroup and a
// policy with allowRawSockets do not warn.
func TestAttachWarnsAboutNetRaw(t *testing.T) {
	dir := testenv.StateDir(t)
	pol := writeFile(t, "p.json", `{"addresses": ["127.14.9.2"]}`)
	raw := writeFile(t, "raw.json", `{"addresses": ["127.14.9.3"], "allowRawSockets": true}`)
	const warning = "keeps CAP_NET_RAW in the host network namespace, where portcullis cannot refuse packet sockets"

	capable := testenv.Cgroup(t, "netraw")
	testenv.Start(t, capable, exec.Command("sleep", "60"))
	time.Sleep(50 * time.Millisecond)
	out := mustRun(t, "attach", "--state-dir", dir, "--cgroup", capable.Path, "--policy", pol, "--id", "netraw")
	if !strings.Contains(out, "portcullisctl: warning: process ") || !strings.Contains(out, warning) ||
		!strings.Contains(out, "--cap-drop NET_RAW") || !strings.Contains(out, `"allowRawSockets": true`) {
		t.Fatalf("attach of a cgroup with a CAP_NET_RAW process:\n%s\nwant the warning", out)
	}
	if !strings.Contains(out, "netraw") {
		t.Fatalf("attach output without the attachment:\n%s", out)
	}

	dropped := testenv.Cgroup(t, "nonetraw")
	testenv.Start(t, dropped, exec.Command("setpriv", "--bounding-set", "-net_raw", "sleep", "60"))
	time.Sleep(50 * time.Millisecond)
	empty := testenv.Cgroup(t, "empty")
	allowed := testenv.Cgroup(t, "allowraw")
	testenv.Start(t, allowed, exec.Command("sleep", "60"))
	time.Sleep(50 * time.Millisecond)
	for _, c := range []struct{ id, path, policy string }{
		{"nonetraw", dropped.Path, writeFile(t, "p2.json", `{"addresses": ["127.14.9.4"]}`)},
		{"empty", empty.Path, writeFile(t, "p3.json", `{"addresses": ["127.14.9.5"]}`)},
		{"allowraw", allowed.Path, raw},
	} {
		if out := mustRun(t, "attach", "--state-dir", dir, "--cgroup", c.path, "--policy", c.policy, "--id", c.id); strings.Contains(out, "warning") {
			t.Errorf("attach %s: %s", c.id, out)
		}
	}
}
