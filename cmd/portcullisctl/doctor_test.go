package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/kernel"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestDoctorReportsEveryFeature(t *testing.T) {
	dir := testenv.StateDir(t)
	out := mustRun(t, "doctor", "--state-dir", dir)
	for _, name := range []string{"capabilities", "cgroup v2", "bpffs", "BTF", "helper bpf_bind", "kfunc bpf_sock_destroy", "iterator tcp", "program type SkLookup", "attach type CGroupInet4Bind", "attach type CgroupInet6GetSockname"} {
		if !strings.Contains(out, name) {
			t.Errorf("doctor does not report %q:\n%s", name, out)
		}
	}
	var features []kernel.Feature
	if err := json.Unmarshal([]byte(mustRun(t, "doctor", "-o", "json", "--state-dir", dir)), &features); err != nil {
		t.Fatal(err)
	}
	if missing := kernel.Missing(features); len(missing) != 0 {
		t.Fatalf("this kernel lacks required features: %+v", missing)
	}
}
