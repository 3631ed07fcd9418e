package crienv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Crictl is where the tests expect crictl (scripts/install-deps.sh).
const Crictl = "/usr/local/bin/crictl"

// Containerd is a running containerd with the CRI plugin.
type Containerd struct {
	t    testing.TB
	Dir  string
	Sock string
	// Host is the network namespace containerd, and so the CNI chain and
	// the pods' host side, run in; the real host's stays untouched.
	Host *testenv.NetNS
}

// Options configure Start.
type Options struct {
	// CNIConfDir and CNIBinDir are the CRI plugin's CNI folders.
	CNIConfDir, CNIBinDir string
	// Runtime is extra TOML for the runc runtime's section
	// (base_runtime_spec, pod_annotations).
	Runtime string
}

// Start starts containerd 1.6 with the CRI plugin (own root, state and
// socket; restrict_oom_score_adj, since runc cannot raise oom_score_adj on
// the test hosts; network namespaces under its state dir) inside host, and
// imports the busybox image, which is also the sandbox image. containerd
// is stopped at cleanup.
func Start(t testing.TB, host *testenv.NetNS, opts Options) *Containerd {
	t.Helper()
	for _, cmd := range [][2]string{{"containerd", "containerd"}, {"ctr", "containerd"}, {"runc", "runc"}} {
		testenv.RequireCommand(t, cmd[0], cmd[1])
	}
	if _, err := os.Stat(Crictl); err != nil {
		t.Fatalf("crictl is not installed at %s (scripts/install-deps.sh: go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0)", Crictl)
	}
	c := &Containerd{t: t, Dir: t.TempDir(), Host: host}
	c.Sock = filepath.Join(c.Dir, "containerd.sock")
	// An empty crictl config: crictl warns on stderr without one.
	os.WriteFile(filepath.Join(c.Dir, "crictl.yaml"), nil, 0o644)
	config := filepath.Join(c.Dir, "config.toml")
	cri := `plugins."io.containerd.grpc.v1.cri"`
	os.WriteFile(config, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[%s]
  sandbox_image = %q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[%s.cni]
  bin_dir = %q
  conf_dir = %q
  max_conf_num = 1
[%s.containerd]
  default_runtime_name = "runc"
  snapshotter = "native"
[%s.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
%s
[%s.containerd.runtimes.runc.options]
  SystemdCgroup = false
`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Sock, filepath.Join(c.Dir, "opt"),
		cri, BusyboxImage, cri, opts.CNIBinDir, opts.CNIConfDir, cri, cri, opts.Runtime, cri)), 0o644)
	testenv.Start(t, cgroup.Cgroup{}, host.Command(PrivateVarLib(t, c.Dir, "containerd", "--config", config)...))
	for i := 0; ; i++ {
		out, err := c.Crictl("version")
		if err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("containerd with CRI did not start: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	archive := filepath.Join(c.Dir, "busybox.tar")
	BuildBusyboxArchive(t, archive)
	if out, err := exec.Command("ctr", "--address", c.Sock, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		// Whatever a failed test left: pods go before containerd stops.
		out, _ := c.Crictl("pods", "-q")
		for _, id := range strings.Fields(out) {
			c.Crictl("stopp", id)
			c.Crictl("rmp", id)
		}
	})
	return c
}

// Crictl runs crictl against this containerd, in the host namespace (exec
// streams through containerd's server on 127.0.0.1 there).
func (c *Containerd) Crictl(args ...string) (string, error) {
	cmd := c.Host.Command(append([]string{Crictl, "--config", filepath.Join(c.Dir, "crictl.yaml"),
		"--runtime-endpoint", "unix://" + c.Sock, "--image-endpoint", "unix://" + c.Sock, "--timeout", "60s"}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// PodConfig writes the config of a pod sandbox as kubelet makes one: a UID
// and the cgroup parent /kubepods/besteffort/pod<UID>, created here
// beforehand (kubelet's cgroupfs layout). It returns the file and the UID.
func (c *Containerd) PodConfig(name string, hostNetwork bool, annotations map[string]string) (path, uid string) {
	c.t.Helper()
	uid = "0c20" + testenv.Suffix() + "-0000-4000-8000-000000000020"
	parent := "/kubepods/besteffort/pod" + uid
	mount, err := cgroup.Mount()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(mount, parent), 0o755); err != nil {
		c.t.Fatal(err)
	}
	RemoveCgroupTree(c.t, "/kubepods")
	network := 0 // POD
	if hostNetwork {
		network = 2 // NODE
	}
	data, _ := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "pc-test", "uid": uid, "attempt": 0},
		"log_directory": filepath.Join(c.Dir, "logs", name),
		"annotations":   annotations,
		"linux": map[string]any{
			"cgroup_parent":    parent,
			"security_context": map[string]any{"namespace_options": map[string]any{"network": network}},
		},
	})
	path = filepath.Join(c.Dir, name+"-"+testenv.Suffix()+"-pod.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path, uid
}

// RemoveCgroupTree removes, at cleanup, the cgroup rel and everything
// below it in every hierarchy (runtimes make the v1 ones); a cgroup still
// in use stays. A runtime's monitor (conmon) may take a moment to exit, so
// it tries for a few seconds.
func RemoveCgroupTree(t testing.TB, rel string) {
	t.Cleanup(func() {
		roots, _ := filepath.Glob("/sys/fs/cgroup/*")
		for try := 0; try < 50; try++ {
			left := false
			for _, root := range roots {
				var dirs []string
				filepath.WalkDir(filepath.Join(root, rel), func(path string, d os.DirEntry, err error) error {
					if err == nil && d.IsDir() {
						dirs = append(dirs, path)
					}
					return nil
				})
				for i := len(dirs) - 1; i >= 0; i-- {
					if os.Remove(dirs[i]) != nil {
						left = true
					}
				}
			}
			if !left {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// varLibWrapper runs a command in a private mount namespace where /var/lib
// is overlaid with a folder of the test's: the CNI result cache that
// libcni keeps in /var/lib/cni (containerd's CRI, podman) stays out of the
// host's. Mounts made inside (a sandbox's network namespace under the
// state dir) are not seen outside: use /proc/PID/ns/net there.
const varLibWrapper = `set -e
T="$1"; shift
mkdir -p "$T/upper" "$T/work"
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$T/upper,workdir=$T/work" /var/lib
exec "$@"
`

// PrivateVarLib returns the command line that runs argv under
// varLibWrapper, with its overlay in dir.
func PrivateVarLib(t testing.TB, dir string, argv ...string) []string {
	t.Helper()
	testenv.RequireCommand(t, "unshare", "util-linux")
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", varLibWrapper, "sh", filepath.Join(dir, "varlib")}, argv...)
}
