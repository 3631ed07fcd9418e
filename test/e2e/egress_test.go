package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// ctlRunner runs the portcullisctl binary against the test's state.
func ctlRunner(t *testing.T, dir string) func(args ...string) string {
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ctl, append(args, "--state-dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portcullisctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

func writePolicy(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestEgressProdToNonprod is seed 003's filtering case under portcullisctl:
// a "prod" container cannot reach a "nonprod" container's listener, at
// connect or at sendto, but reaches another prod container; membership
// follows attach and detach; a rule change keeps an established connection
// and `policy set --terminate` ends it.
func TestEgressProdToNonprod(t *testing.T) {
	dir := testenv.StateDir(t)
	ctl := ctlRunner(t, dir)
	nonprod, other, prod := testenv.Cgroup(t, "nonprod"), testenv.Cgroup(t, "other"), testenv.Cgroup(t, "prod")
	ctl("attach", "--cgroup", nonprod.Path, "--id", "nonprod", "--policy",
		writePolicy(t, `{"addresses": ["127.13.1.2"], "groups": ["nonprod"]}`))
	ctl("attach", "--cgroup", other.Path, "--id", "other", "--policy",
		writePolicy(t, `{"addresses": ["127.13.1.3"], "groups": ["prod"]}`))
	ctl("attach", "--cgroup", prod.Path, "--id", "prod", "--policy", writePolicy(t, `{
		"addresses": ["127.13.1.1"], "groups": ["prod"],
		"egress": [{"action": "deny", "group": "nonprod"}]}`))
	guardtest.Serve(t, nonprod, "127.13.1.2:13010")
	guardtest.Serve(t, other, "127.13.1.3:13010")

	p := guardtest.Start(t, prod, nil)
	p.Connect(t, "tcp", "127.13.1.2:13010", "EPERM")
	p.Connect(t, "tcp", "[::ffff:127.13.1.2]:13010", "EPERM")
	p.Connect(t, "udp", "127.13.1.2:13010", "EPERM")
	p.SendTo(t, "127.13.1.2:13010", "EPERM")
	held := p.Connect(t, "tcp", "127.13.1.3:13010", "")
	p.SendTo(t, "127.13.1.3:13010", "")
	// A host process is not filtered.
	c, err := net.Dial("tcp", "127.13.1.2:13010")
	if err != nil {
		t.Fatalf("host connect to nonprod: %v", err)
	}
	c.Close()

	// Detached, 127.13.1.2 belongs to no nonprod container any more.
	ctl("detach", "--id", "nonprod")
	kept := p.Connect(t, "tcp", "127.13.1.2:13010", "")

	// A new rule leaves established connections alone...
	deny := writePolicy(t, `{"addresses": ["127.13.1.1"], "groups": ["prod"],
		"egress": [{"action": "deny", "cidr": "127.13.1.3/32", "ports": ["13000-13019"], "protocol": "tcp"}]}`)
	ctl("policy", "set", "--id", "prod", "--policy", deny)
	p.Connect(t, "tcp", "127.13.1.3:13010", "EPERM")
	p.SendTo(t, "127.13.1.3:13010", "") // the rule is tcp only
	p.Alive(t, held)
	// ...and --terminate destroys the ones it denies, only those.
	var out struct {
		Terminated struct {
			Destroyed int `json:"destroyed"`
		} `json:"terminated"`
	}
	if err := json.Unmarshal([]byte(ctl("policy", "set", "--id", "prod", "--policy", deny, "--terminate", "-o", "json")), &out); err != nil {
		t.Fatal(err)
	}
	if out.Terminated.Destroyed != 1 {
		t.Errorf("policy set --terminate destroyed %d sockets, want 1", out.Terminated.Destroyed)
	}
	p.Aborted(t, held)
	p.Alive(t, kept)
}
