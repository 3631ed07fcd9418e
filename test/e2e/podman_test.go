package e2e

// podman 4.3 (Debian 12) both ways: its CNI network backend with portcullis
// chained, and a host-network container through the hooks.d file.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/crienv"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// podmanEnv is podman with a containers.conf and storage of the test's
// own, run in a network namespace the test made (the containers' "host").
type podmanEnv struct {
	t        *testing.T
	dir      string
	host     *testenv.NetNS
	env      []string
	stateDir string
	logFile  string
	network  string
	// cgroupParent holds the containers' and conmon's cgroups.
	cgroupParent string
	// mountNS is where every podman command runs: one private mount
	// namespace (crienv.PrivateVarLib), so that the network namespaces
	// podman mounts there stay visible to its later commands.
	mountNS string
}

func newPodman(t *testing.T) *podmanEnv {
	t.Helper()
	testenv.RequireCommand(t, "podman", "podman")
	testenv.RequireCommand(t, "runc", "runc")
	e := &podmanEnv{t: t, dir: t.TempDir(), host: testenv.NewNetNS(t), stateDir: testenv.StateDir(t), network: "pc-podman-" + testenv.Suffix()}
	e.logFile = filepath.Join(e.dir, "portcullis.log")
	e.cgroupParent = "/portcullis-test-podman-" + testenv.Suffix()
	crienv.RemoveCgroupTree(t, e.cgroupParent)
	for _, sub := range []string{"net.d", "bin", "ipam", "hooks.d", "tmp"} {
		os.MkdirAll(filepath.Join(e.dir, sub), 0o755)
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback", testenv.Binary(t, "./plugins/portcullis")} {
		if err := os.Symlink(p, filepath.Join(e.dir, "bin", filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	conflist := filepath.Join(e.dir, "net.d", e.network+".conflist")
	writeConflist(t, conflist, e.network, e.stateDir, e.logFile, filepath.Join(e.dir, "ipam"))
	var list map[string]any
	readJSON(t, conflist, &list)
	plugins := list["plugins"].([]any)
	plugins[0].(map[string]any)["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": "10.20.1.0/24"}}}
	plugins[len(plugins)-1].(map[string]any)["policy"] = map[string]any{"allowedPorts": []string{criPort}}
	writeJSON(t, conflist, list)

	// What podman needs on this host (docs/oci-hook.md): cgroupfs, runc,
	// rlimits within the host's hard limits; and the CNI backend with the
	// test's folders.
	conf := filepath.Join(e.dir, "containers.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
hooks_dir = [%q]
`, filepath.Join(e.dir, "bin"), filepath.Join(e.dir, "net.d"), filepath.Join(e.dir, "events.log"),
		filepath.Join(e.dir, "tmp"), filepath.Join(e.dir, "hooks.d"))), 0o644)
	storage := filepath.Join(e.dir, "storage.conf")
	os.WriteFile(storage, []byte(fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(e.dir, "graph"), filepath.Join(e.dir, "run"))), 0o644)
	e.env = append(os.Environ(), "CONTAINERS_CONF="+conf, "CONTAINERS_STORAGE_CONF="+storage)
	holder := testenv.Start(t, cgroup.Cgroup{}, exec.Command("unshare", crienv.PrivateVarLib(t, e.dir, "sleep", "1000000")[1:]...))
	e.mountNS = fmt.Sprintf("/proc/%d/ns/mnt", holder.Cmd.Process.Pid)
	for i := 0; ; i++ {
		// unshare and sh exec in place: the overlay is mounted once the
		// process is sleep.
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", holder.Cmd.Process.Pid)); strings.HasPrefix(string(cmdline), "sleep") {
			break
		}
		if i == 100 {
			t.Fatalf("the mount namespace for podman was not made: %s", holder.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}

	archive := filepath.Join(e.dir, "busybox.tar")
	crienv.BuildBusyboxArchive(t, archive)
	// podman names an OCI archive's image after its ref.name; the tests
	// use the name the CRI tests use.
	loaded := e.must("load", "-q", "-i", archive)
	e.must("tag", strings.TrimSpace(loaded[strings.LastIndex(loaded, " ")+1:]), crienv.BusyboxImage)
	t.Cleanup(func() {
		e.podman("rm", "-a", "-f", "-t", "0")
		if t.Failed() {
			t.Logf("plugin log:\n%s", readLog(e.logFile))
		}
	})
	return e
}

func (e *podmanEnv) podman(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--mount=" + e.mountNS, "--net=" + e.host.Path, "podman"}, args...)...)
	cmd.Env = e.env
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *podmanEnv) must(args ...string) string {
	e.t.Helper()
	out, err := e.podman(args...)
	if err != nil {
		e.t.Fatalf("podman %s: %v\n%s\nplugin log:\n%s", strings.Join(args, " "), err, out, readLog(e.logFile))
	}
	return out
}

// TestPodmanCNI: podman's CNI backend calls ADD before the container's
// process exists and passes no cgroupPath; the container starts, its
// listener is pinned to its address, a bind outside the policy fails, a
// process exec'd in is covered, and podman rm leaves nothing.
func TestPodmanCNI(t *testing.T) {
	e := newPodman(t)
	name := "pc-web-" + testenv.Suffix()
	e.must("run", "-d", "--cgroup-parent", e.cgroupParent, "--name", name, "--network", e.network, crienv.BusyboxImage, "/bin/nc", "-ll", "-p", criPort, "-e", "/bin/echo", "podman")
	list := cniAttachments(t, e.stateDir)
	if len(list) != 1 || !list[0].KeyedByNetNS() || len(list[0].Policy.Addresses) != 1 {
		t.Fatalf("attachments %+v, want one keyed by the container's namespace, with its address", list)
	}
	ip := list[0].Policy.Addresses[0].String()
	if !strings.HasPrefix(ip, "10.20.1.") {
		t.Fatalf("container address %s, want one of 10.20.1.0/24", ip)
	}
	// podman's namespace is mounted in its private mount namespace.
	var pid int
	fmt.Sscan(e.must("inspect", "-f", "{{.State.Pid}}", name), &pid)
	netns := &testenv.NetNS{Path: fmt.Sprintf("/proc/%d/ns/net", pid)}
	waitListeningOn(t, netns, criPort, ip+":"+criPort, "[::ffff:"+ip+"]:"+criPort)
	out, err := e.podman("exec", name, "/bin/nc", "-l", "-p", criDenied)
	if err == nil || !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("podman exec nc -l -p %s: %v %q, want bind: Operation not permitted", criDenied, err, out)
	}
	e.must("rm", "-f", "-t", "0", name)
	for i := 0; len(cniAttachments(t, e.stateDir)) != 0; i++ {
		if i == 100 {
			t.Fatalf("attachments after podman rm: %+v", cniAttachments(t, e.stateDir))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if links, _ := filepath.Glob(filepath.Join(e.stateDir, "netns", "links", "*")); len(links) != 0 {
		t.Fatalf("namespace links after podman rm: %v", links)
	}
}

// TestPodmanHookHostNetwork: podman run --network host with the hooks.d
// file (conf/hooks.d/portcullis.json, pointed at the test's binary and
// state) and io.portcullis.policy-file attaches the policy; --rm detaches.
func TestPodmanHookHostNetwork(t *testing.T) {
	e := newPodman(t)
	hook := testenv.Binary(t, "./hooks/portcullis-hook")
	var file map[string]any
	readJSON(t, filepath.Join(testenv.RepoRoot(t), "conf", "hooks.d", "portcullis.json"), &file)
	h := file["hook"].(map[string]any)
	h["path"] = hook
	h["env"] = []string{"PORTCULLIS_STATE_DIR=" + e.stateDir}
	writeJSON(t, filepath.Join(e.dir, "hooks.d", "portcullis.json"), file)
	policy := filepath.Join(e.dir, "policy.json")
	os.WriteFile(policy, []byte(`{"addresses": ["127.0.20.2"], "allowedPorts": ["`+criPort+`"]}`), 0o644)

	name := "pc-hostweb-" + testenv.Suffix()
	// --cap-drop NET_RAW: the hook refuses a host-network container with
	// addresses that keeps it (docs/security.md, "Packet sockets").
	e.must("run", "-d", "--rm", "--cgroup-parent", e.cgroupParent, "--name", name, "--network", "host", "--cap-drop", "NET_RAW", "--annotation", "io.portcullis.policy-file="+policy,
		crienv.BusyboxImage, "/bin/nc", "-ll", "-p", criPort, "-e", "/bin/echo", "hostpodman")
	waitListeningOn(t, e.host, criPort, "127.0.20.2:"+criPort, "[::ffff:127.0.20.2]:"+criPort)
	list := cniAttachments(t, e.stateDir)
	if len(list) != 1 || list[0].Owner != "oci-hook" || list[0].KeyedByNetNS() {
		t.Fatalf("attachments %+v, want the hook's one", list)
	}
	out, err := e.podman("exec", name, "/bin/nc", "-l", "-p", criDenied)
	if err == nil || !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("podman exec nc -l -p %s: %v %q, want bind: Operation not permitted", criDenied, err, out)
	}
	e.must("stop", "-t", "0", name)
	for i := 0; len(cniAttachments(t, e.stateDir)) != 0; i++ {
		if i == 200 {
			t.Fatalf("attachments after podman stop of a --rm container: %+v", cniAttachments(t, e.stateDir))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPodmanPublish: podman run -p on its CNI backend, with portcullis the
// only plugin that takes portMappings (no portmap in the conflist). A
// client in the containers' host namespace that dials 127.0.0.1 or ::1 on
// the host port reaches the container's listener on its own port, and
// podman rm takes the publication away. (podman itself listens on the host
// port, from conmon, to reserve it; the reply proves the connection went
// to the container instead.)
func TestPodmanPublish(t *testing.T) {
	e := newPodman(t)
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	const hostPort = "20681"
	name := "pc-pub-" + testenv.Suffix()
	e.must("run", "-d", "--cgroup-parent", e.cgroupParent, "--name", name, "--network", e.network,
		"-p", hostPort+":"+criPort, crienv.BusyboxImage, "/bin/nc", "-ll", "-p", criPort, "-e", "/bin/echo", "published")
	list := cniAttachments(t, e.stateDir)
	if len(list) != 1 || len(list[0].Policy.PortMappings) != 1 || list[0].Policy.PortMappings[0].HostPort != 20681 {
		t.Fatalf("attachments %+v, want one with podman's port mapping", list)
	}
	var pid int
	fmt.Sscan(e.must("inspect", "-f", "{{.State.Pid}}", name), &pid)
	ip := list[0].Policy.Addresses[0].String()
	waitListeningOn(t, &testenv.NetNS{Path: fmt.Sprintf("/proc/%d/ns/net", pid)}, criPort, ip+":"+criPort, "[::ffff:"+ip+"]:"+criPort)
	dial := func(addr string) (string, error) {
		out, err := e.host.Command("timeout", "10", busybox, "nc", addr, hostPort).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for _, addr := range []string{"127.0.0.1", "::1"} {
		if out, err := dial(addr); err != nil || out != "published" {
			t.Fatalf("nc %s %s from the host: %v %q, want the container's reply", addr, hostPort, err, out)
		}
	}
	e.must("rm", "-f", "-t", "0", name)
	for i := 0; len(cniAttachments(t, e.stateDir)) != 0; i++ {
		if i == 100 {
			t.Fatalf("attachments after podman rm: %+v", cniAttachments(t, e.stateDir))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := dial("127.0.0.1"); err == nil || out == "published" {
		t.Fatalf("nc 127.0.0.1 %s after podman rm: %q, want no reply", hostPort, out)
	}
}
