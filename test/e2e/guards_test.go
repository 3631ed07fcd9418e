package e2e

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/test/guardtest"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestRuncConnectionCapsAndEgress gives a runc container (host network) a
// policy with caps and egress rules through the OCI hook's annotation, and
// meets both from a process run in it with runc exec.
func TestRuncConnectionCapsAndEgress(t *testing.T) {
	e := newRuncEnv(t)
	id := "pc-guards-" + testenv.Suffix()
	bundle := e.bundle(bundleOptions{
		args: []string{"sleep", "1000"},
		annotations: map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["127.13.5.1"],
			"connectionLimits": {"perDestination": 2, "total": 3},
			"egress": [{"action": "deny", "cidr": "127.13.6.0/24", "protocol": "tcp"}]}`},
	})
	copyFile(t, testenv.Binary(t, "./test/connprobe"), filepath.Join(bundle, "rootfs", "bin", "connprobe"))
	c := e.start(id, bundle)
	defer c.stop(t)
	a := guardtest.Listen(t, "127.13.5.9:13050")
	guardtest.Listen(t, "127.13.6.9:13050")
	guardtest.ListenUDP(t, "127.13.6.9:13051")

	p := guardtest.Start(t, cgroup.Cgroup{}, func(argv ...string) *exec.Cmd {
		return exec.Command("runc", "--root", e.root, "exec", id, "/bin/connprobe")
	})
	p.Connect(t, "tcp", "127.13.6.9:13050", "EPERM")
	p.Connect(t, "udp", "127.13.6.9:13051", "") // the rule is tcp only: counted
	first := p.Connect(t, "tcp", a.Addr, "")
	p.Connect(t, "tcp", a.Addr, "")
	p.Connect(t, "tcp", "127.13.5.9:13050", "EAGAIN") // per destination
	p.Close(t, first)
	p.Connect(t, "tcp", a.Addr, "")
	p.Connect(t, "udp", "127.13.6.9:13051", "EAGAIN") // total
}
