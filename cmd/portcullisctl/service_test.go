package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/testenv"
)

func TestServiceAndPorts(t *testing.T) {
	dir := testenv.StateDir(t)
	t.Setenv("PORTCULLIS_SERVICES_DIR", t.TempDir())
	mustRun(t, "service", "add", "db", "--state-dir", dir, "--frontend", "127.0.0.1:5432", "--frontend", "10.96.0.10:5432/tcp")
	if _, err := run(t, "service", "add", "db", "--state-dir", dir, "--frontend", "127.0.0.1:5433"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("adding db twice: %v", err)
	}
	if _, err := run(t, "service", "add", "x", "--state-dir", dir, "--frontend", "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "ADDR:PORT") {
		t.Errorf("bad frontend: %v", err)
	}
	mustRun(t, "service", "backend", "add", "db", "10.0.0.7:5432", "--state-dir", dir)

	cg := testenv.Cgroup(t, "svc")
	pol := writeFile(t, "p.json", `{"addresses": ["127.0.0.2"], "provides": [{"service": "db", "port": 5432}]}`)
	mustRun(t, "attach", "--state-dir", dir, "--cgroup", cg.Path, "--policy", pol, "--id", "pg")
	out := mustRun(t, "service", "show", "db", "--state-dir", dir)
	if !strings.Contains(out, "10.0.0.7:5432/tcp") || !strings.Contains(out, "not listening on 5432/tcp") || !strings.Contains(out, "pg") {
		t.Errorf("service show before listening:\n%s", out)
	}

	// A listener in the container shows up in ports and makes pg live.
	ns := testenv.NewNetNS(t)
	probe := testenv.Binary(t, "./test/sockprobe")
	p := testenv.Start(t, cg, exec.Command("nsenter", "--net="+ns.Path, "--", probe, "listen", "-addr", "0.0.0.0:5432"))
	p.Line(t, 5*time.Second)
	out = mustRun(t, "ports", "--state-dir", dir)
	if !strings.Contains(out, "pg") || !strings.Contains(out, "127.0.0.2:5432") {
		t.Errorf("ports:\n%s", out)
	}
	var svc struct {
		Backends []struct {
			Kind       string `json:"kind"`
			Attachment string `json:"attachment"`
			Live       bool   `json:"live"`
		} `json:"backends"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "service", "show", "db", "--state-dir", dir, "-o", "json")), &svc); err != nil {
		t.Fatal(err)
	}
	if len(svc.Backends) != 2 || svc.Backends[1].Attachment != "pg" || !svc.Backends[1].Live {
		t.Errorf("service show -o json: %+v", svc)
	}
	out = mustRun(t, "service", "list", "--state-dir", dir)
	if !strings.Contains(out, "10.96.0.10:5432/tcp,127.0.0.1:5432/tcp  2         2") {
		t.Errorf("service list:\n%s", out)
	}
	mustRun(t, "service", "backend", "del", "db", "10.0.0.7:5432", "--state-dir", dir)
	mustRun(t, "service", "del", "db", "--state-dir", dir)
	if out := mustRun(t, "service", "list", "--state-dir", dir); strings.Contains(out, "db") {
		t.Errorf("db still listed:\n%s", out)
	}
	if _, err := run(t, "service", "show", "db", "--state-dir", dir); err == nil || !strings.Contains(err.Error(), "no such service") {
		t.Errorf("show deleted: %v", err)
	}
}
