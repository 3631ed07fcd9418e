package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// load --max-* sizes the maps, status reports their memory and one
// attachment by id, doctor sums the memory.
func TestLoadSizesAndMapMemory(t *testing.T) {
	dir := testenv.StateDir(t)
	if _, err := run(t, "load", "--state-dir", dir, "--max-peers", "10"); err == nil || !strings.Contains(err.Error(), "max-peers 10: must be between 1024") {
		t.Fatalf("load --max-peers 10: %v", err)
	}
	mustRun(t, "load", "--state-dir", dir, "--max-containers", "2048", "--max-peers", "4096")
	if _, err := run(t, "load", "--state-dir", dir, "--max-peers", "8192"); err == nil || !strings.Contains(err.Error(), "unload it first") {
		t.Errorf("load --max-peers on a loaded state: %v", err)
	}
	cg := testenv.Cgroup(t, "sizes")
	pol := writeFile(t, "p.json", `{"allowedPorts": ["11300"]}`)
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", pol, "--id", "z1")

	var report statusReport
	if err := json.Unmarshal([]byte(mustRun(t, "status", "--state-dir", dir, "-o", "json")), &report); err != nil {
		t.Fatal(err)
	}
	maxes := map[string]uint32{}
	var sum uint64
	for _, m := range report.Maps {
		maxes[m.Name] = m.MaxEntries
		sum += m.Memlock
	}
	if maxes["policies"] != 2048 || maxes["svc_peers"] != 4096 || maxes["svc_udp_peers"] != 4096 {
		t.Errorf("map sizes %v, want policies 2048 and peers 4096", maxes)
	}
	// The LRU peer maps are preallocated: 4096 entries of each are at
	// least 400 KiB.
	if sum != report.MapMemory || sum < 400<<10 {
		t.Errorf("map memory %d (sum %d)", report.MapMemory, sum)
	}
	if out := mustRun(t, "status", "--state-dir", dir); !strings.Contains(out, "map memory") {
		t.Errorf("status table without map memory:\n%s", out)
	}
	if out := mustRun(t, "status", "--state-dir", dir, "z1"); !strings.Contains(out, "z1") || !strings.Contains(out, "11300") {
		t.Errorf("status z1:\n%s", out)
	}
	if _, err := run(t, "status", "--state-dir", dir, "nope"); err == nil || !strings.Contains(err.Error(), "no such attachment") {
		t.Errorf("status of an unknown id: %v", err)
	}
	if out := mustRun(t, "doctor", "--state-dir", dir); !strings.Contains(out, "MiB") {
		t.Errorf("doctor without the state's map memory:\n%s", out)
	}
	mustRun(t, "detach", "--state-dir", dir, "--id", "z1")
}
