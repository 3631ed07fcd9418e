package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestRuncContainerProvidesAService: a host-network runc container whose
// policy (set by the OCI hook) provides "db" becomes the backend of a
// frontend only once it listens; a client container dialling the frontend
// reaches it and sees the frontend as its peer.
func TestRuncContainerProvidesAService(t *testing.T) {
	e := newRuncEnv(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	const frontend, port = "127.0.0.1:24622", "24621"
	ctlRun := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctl, append(args, "--state-dir", e.stateDir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portcullisctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dial := func(name string) testenv.ProbeResult {
		t.Helper()
		c := e.start(name+"-"+testenv.Suffix(), e.bundle(bundleOptions{
			args:        []string{"sockprobe", "connect", "-proto", "tcp", "-addr", frontend},
			annotations: map[string]string{ocihook.AnnotationPolicy: `{}`},
		}))
		for i := 0; i < 100; i++ {
			if out := strings.TrimSpace(c.output(t)); strings.HasPrefix(out, "{") {
				c.stop(t)
				return testenv.ParseProbe(t, strings.Split(out, "\n")[0])
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("client printed nothing: %q", c.output(t))
		return testenv.ProbeResult{}
	}

	ctlRun("load")
	ctlRun("service", "add", "db", "--frontend", frontend+"/tcp")
	if r := dial("pc-svc-early"); r.OK || r.Errno != "ECONNREFUSED" {
		t.Fatalf("dial before any backend exists: %+v, want ECONNREFUSED", r)
	}

	backend := e.start("pc-svc-backend-"+testenv.Suffix(), e.bundle(bundleOptions{
		args: []string{"sockprobe", "listen", "-proto", "tcp", "-addr", "0.0.0.0:" + port, "-name", "runc-backend"},
		annotations: map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["127.0.0.31"],
			"provides": [{"service": "db", "port": ` + port + `, "protocol": "tcp"}]}`},
	}))
	waitListening(t, nil, port, "127.0.0.31:"+port)
	if out := ctlRun("service", "show", "db"); !strings.Contains(out, "127.0.0.31:"+port) {
		t.Fatalf("service show db does not list the runc backend:\n%s", out)
	}
	r := dial("pc-svc-client")
	if !r.OK || r.Reply != "runc-backend" || r.Peer != frontend {
		t.Fatalf("dial %s: %+v, want the runc backend's answer with the frontend as peer", frontend, r)
	}

	backend.stop(t) // poststop detaches it: the service has no backend again
	if r := dial("pc-svc-late"); r.OK || r.Errno != "ECONNREFUSED" {
		t.Fatalf("dial after the backend container stopped: %+v, want ECONNREFUSED", r)
	}
}
