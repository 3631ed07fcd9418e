package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestStatsAndMetricsVerbs(t *testing.T) {
	dir := testenv.StateDir(t)
	if _, err := run(t, "stats", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("stats before load: %v", err)
	}
	cg := testenv.Cgroup(t, "stats-cli")
	pol := writeFile(t, "p.json", `{"mark": 1401, "priority": 3, "dscp": 10}`)
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", pol, "--id", "st1")

	var list []stats.Attachment
	if err := json.Unmarshal([]byte(mustRun(t, "stats", "--state-dir", dir, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "st1" || len(list[0].Traffic) != 12 || len(list[0].Decisions) != len(stats.Reasons()) {
		t.Errorf("stats -o json: %+v", list)
	}
	if out := mustRun(t, "stats", "--state-dir", dir, "--id", "st1"); !strings.Contains(out, "RX BYTES") || !strings.Contains(out, "st1") {
		t.Errorf("stats --id table:\n%s", out)
	}
	if _, err := run(t, "stats", "--state-dir", dir, "--id", "nope"); err == nil || !strings.Contains(err.Error(), "no such attachment") {
		t.Errorf("stats --id unknown: %v", err)
	}

	path := filepath.Join(t.TempDir(), "portcullis.prom")
	mustRun(t, "metrics", "--state-dir", dir, "--textfile", path)
	data, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(data), `portcullis_decisions_total{cgroup="`+cg.Path+`",id="st1"`) {
		t.Errorf("textfile: %v\n%s", err, data)
	}
	if _, err := run(t, "metrics", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "exactly one of") {
		t.Errorf("metrics without a mode: %v", err)
	}
	if _, err := run(t, "metrics", "--state-dir", dir, "--listen", "256.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Errorf("metrics --listen bad address: %v", err)
	}
}
