package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// policy set replaces the policy in place; a bad one is refused with an
// error naming what to fix and the old policy stays.
func TestPolicySet(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "set")
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--id", "app", "--policy", writeFile(t, "p.json", `{"allowedPorts": ["13070"]}`))
	next := writeFile(t, "next.json", `{"allowedPorts": ["13071"], "connectionLimits": {"total": 5}, "groups": ["prod"],
		"egress": [{"action": "deny", "group": "nonprod"}]}`)
	mustRun(t, "policy", "set", "--state-dir", dir, "--id", "app", "--policy", next)

	policyOf := func() string {
		var report struct {
			Attachments []struct {
				Policy json.RawMessage `json:"policy"`
			} `json:"attachments"`
			Connections map[string]struct {
				Total uint32 `json:"total"`
			} `json:"connections"`
		}
		out := mustRun(t, "status", "--state-dir", dir, "-o", "json")
		json.Unmarshal([]byte(out), &report)
		if len(report.Attachments) != 1 {
			t.Fatalf("status: %s", out)
		}
		if report.Connections["app"].Total != 5 {
			t.Errorf("status shows no caps for app:\n%s", out)
		}
		return string(report.Attachments[0].Policy)
	}
	want := policyOf()
	if !strings.Contains(want, `"13071"`) || !strings.Contains(want, `"nonprod"`) {
		t.Fatalf("policy after set: %s", want)
	}
	if out := mustRun(t, "status", "--state-dir", dir); !strings.Contains(out, "0/5") {
		t.Errorf("status table lacks the connection count:\n%s", out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "nope", "--policy", next}, `no such attachment: "nope"`},
		{[]string{"--id", "app", "--policy", writeFile(t, "bad.json", `{"egress": [{"action": "block"}]}`)}, `egress[0].action: "block" must be allow or deny`},
		{[]string{"--id", "app", "--policy", writeFile(t, "absent.json", `{"addresses": ["192.0.2.77"]}`)}, "192.0.2.77 is not configured on this host"},
		{[]string{"--policy", next}, `required flag(s) "id"`},
	} {
		out, err := run(t, append([]string{"policy", "set", "--state-dir", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("policy set %v: %v (%s), want an error containing %q", tc.args, err, out, tc.want)
		}
	}
	if got := policyOf(); got != want {
		t.Errorf("a refused policy set changed the policy:\n%s\nwant\n%s", got, want)
	}
}
