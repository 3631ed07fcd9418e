package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestStatus(t *testing.T) {
	dir := testenv.StateDir(t)
	if out := mustRun(t, "status", "--state-dir", dir); !strings.Contains(out, "not loaded") {
		t.Errorf("status before load: %s", out)
	}
	cg := testenv.Cgroup(t, "status")
	pol := writeFile(t, "p.json", `{"addresses": ["127.0.0.5"], "allowedPorts": ["9000"]}`)
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", pol, "--id", "s1")
	out := mustRun(t, "status", "--state-dir", dir)
	if !strings.Contains(out, "1 attachments") || !strings.Contains(out, "s1") || !strings.Contains(out, "127.0.0.5") {
		t.Errorf("status table:\n%s", out)
	}
	var report statusReport
	if err := json.Unmarshal([]byte(mustRun(t, "status", "--state-dir", dir, "-o", "json")), &report); err != nil {
		t.Fatal(err)
	}
	if !report.Loaded || len(report.Attachments) != 1 || report.Attachments[0].CgroupID != cg.ID ||
		report.Attachments[0].Policy.AllowedPorts[0].First != 9000 {
		t.Errorf("status -o json: %+v", report)
	}
	if _, err := run(t, "status", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "table or json") {
		t.Errorf("bad output format: %v", err)
	}
}
