package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/cni"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// ctrCNIWrapper runs a command (ctr) in a private mount namespace where
// /etc/cni/net.d, /opt/cni/bin and /var/lib/cni are the test's own: ctr run
// --cni reads only those fixed paths, and the host's must stay untouched.
// /etc, /opt and /var/lib are overlaid (their contents stay visible) so the
// folders can be made whether or not the host has them.
const ctrCNIWrapper = `#!/bin/sh
set -e
T="$1"; shift
for d in etc opt var/lib; do
	mkdir -p "$T/overlay/$d/upper" "$T/overlay/$d/work"
	mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/overlay/$d/upper,workdir=$T/overlay/$d/work" "/$d"
done
mkdir -p /etc/cni/net.d /opt/cni/bin
mount --bind "$T/net.d" /etc/cni/net.d
mount --bind "$T/bin" /opt/cni/bin
exec "$@"
`

// TestContainerdCNI runs a busybox-static container with `ctr run --cni`
// under a containerd of the test's own, with a conflist of the reference
// bridge and host-local plugins followed by portcullis (the example
// conf/bridge-portcullis.conflist, pointed at the test's state). ctr and so
// the whole chain run inside a network namespace the test made, which
// stands in for the host. The container's wildcard listener is pinned to
// its bridge address, a bind outside the policy is refused, and killing
// the task makes ctr run DEL, after which the pinned state is empty.
func TestContainerdCNI(t *testing.T) {
	for _, cmd := range [][2]string{{"ctr", "containerd"}, {"unshare", "util-linux"}, {"nsenter", "util-linux"}, {"bpftool", "bpftool"}} {
		testenv.RequireCommand(t, cmd[0], cmd[1])
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			t.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	stateDir := testenv.StateDir(t)
	plugin := testenv.Binary(t, "./plugins/portcullis")
	probe := testenv.Binary(t, "./test/sockprobe")
	busybox := testenv.RequireCommand(t, "busybox", "busybox-static")
	host := testenv.NewNetNS(t)
	sock, ctr := startContainerd(t)

	dir, network, logFile, wrapper := ctrCNIFolders(t, stateDir, plugin, nil)

	// The container: busybox-static answering its id on port 24601.
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	copyFile(t, busybox, filepath.Join(rootfs, "bin", "busybox"))
	for _, applet := range []string{"sh", "nc", "echo", "sleep"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", applet))
	}
	id := "pc-ctrd-" + testenv.Suffix()
	t.Cleanup(func() {
		ctr("task", "kill", "-s", "KILL", id)
		ctr("task", "rm", "-f", id)
		ctr("container", "rm", id)
	})
	// Not detached: ctr run --cni runs DEL itself when the task exits
	// (containerd 1.6's ctr never does for -d).
	run := testenv.Start(t, cgroup.Cgroup{}, host.Command("unshare", "--mount", "--propagation", "private", "--",
		wrapper, dir, "ctr", "--address", sock, "run", "--cni", "--rootfs", rootfs, id,
		"/bin/nc", "-ll", "-p", runcPort, "-e", "/bin/echo", id))

	// ADD keyed the policy by the container's network namespace, with the
	// bridge's address.
	attachmentID := cni.AttachmentID("default-"+id, "eth0")
	var a state.Attachment
	for i := 0; ; i++ {
		if list := cniAttachments(t, stateDir); len(list) == 1 {
			a = list[0]
			break
		}
		if i == 200 {
			t.Fatalf("no attachment after ctr run --cni; ctr says: %s\nplugin log:\n%s", run.Stderr(), readLog(logFile))
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := taskPID(t, ctr, id)
	netns := fmt.Sprintf("/proc/%d/ns/net", pid)
	if a.ID != attachmentID || !a.KeyedByNetNS() || a.NetNS != netns || a.Owner != cni.Owner(network) || len(a.Policy.Addresses) != 1 ||
		!strings.HasPrefix(a.Policy.Addresses[0].String(), "10.96.0.") {
		t.Fatalf("attachment %+v\nwant id %s keyed by the task's namespace %s, owner %s, an address from 10.96.0.0/24", a, attachmentID, netns, cni.Owner(network))
	}
	ip := a.Policy.Addresses[0].String()
	if links, _ := filepath.Glob(filepath.Join(stateDir, "netns", "links", "bind4")); len(links) != 1 {
		t.Fatalf("no namespace link bind4 in %s", stateDir)
	}

	// busybox nc listens on [::]:24601; the container's socket is pinned
	// to its address (v4-mapped, since the container has only IPv4).
	var listeners string
	for i := 0; i < 100; i++ {
		out, _ := exec.Command("nsenter", "--net="+netns, "ss", "-Hltn", "sport = :"+runcPort).Output()
		if listeners = strings.TrimSpace(string(out)); listeners != "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fields := strings.Fields(listeners); len(fields) < 4 || (fields[3] != ip+":"+runcPort && fields[3] != "[::ffff:"+ip+"]:"+runcPort) {
		t.Fatalf("listeners on %s in the container: %q, want one pinned to %s", runcPort, listeners, ip)
	}
	// Reachable from the host namespace through the bridge.
	out, _ := host.Command(probe, "connect", "-addr", ip+":"+runcPort).Output()
	if r := testenv.ParseProbe(t, strings.TrimSpace(string(out))); !r.OK || r.Reply != id {
		t.Fatalf("connect from the host to %s:%s: %+v", ip, runcPort, r)
	}
	// A port outside the policy is refused inside the container.
	refused, err := ctr("task", "exec", "--exec-id", "refused", id, "/bin/nc", "-l", "-p", runcDenied)
	if err == nil || !strings.Contains(refused, "bind: Operation not permitted") {
		t.Fatalf("nc -l -p %s in the container: %v %q, want bind: Operation not permitted", runcDenied, err, refused)
	}

	// ctr task kill: the task exits, ctr run calls DEL and deletes the
	// task; then the container goes.
	if out, err := ctr("task", "kill", "-s", "KILL", id); err != nil {
		t.Fatalf("ctr task kill: %v\n%s", err, out)
	}
	run.Wait(t, 30*time.Second)
	if out, err := ctr("container", "rm", id); err != nil {
		t.Fatalf("ctr container rm: %v\n%s", err, out)
	}
	if list := cniAttachments(t, stateDir); len(list) != 0 {
		t.Fatalf("attachments after the task was killed and deleted: %+v", list)
	}
	for _, m := range []string{"policies", "portmaps", "attachments"} {
		if dump := strings.TrimSpace(testenv.Run(t, "bpftool", "-j", "map", "dump", "pinned", filepath.Join(stateDir, "maps", m))); dump != "[]" {
			t.Fatalf("map %s after DEL: %s", m, dump)
		}
	}
	if links, _ := os.ReadDir(filepath.Join(stateDir, "cgroups")); len(links) != 0 {
		t.Fatalf("link folders after DEL: %v", links)
	}
	if links, _ := filepath.Glob(filepath.Join(stateDir, "netns", "links", "*")); len(links) != 0 {
		t.Fatalf("namespace links after DEL: %v", links)
	}
	log := readLog(logFile)
	for _, want := range []string{"ADD container=default-" + id, "DEL container=default-" + id, "detached " + attachmentID} {
		if !strings.Contains(log, want) {
			t.Fatalf("plugin log has no %q:\n%s", want, log)
		}
	}
	// Nothing of this test's reached the host's CNI folders. Other
	// software on the host (podman, a CRI runtime) may use them, so only
	// entries naming this test's network or container count.
	for _, dir := range []string{"/etc/cni/net.d", "/var/lib/cni", "/var/lib/cni/results", "/var/lib/cni/networks"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			data, _ := os.ReadFile(path)
			if strings.Contains(e.Name(), network) || strings.Contains(e.Name(), id) || strings.Contains(string(data), network) {
				t.Errorf("%s appeared on the host: the test must keep to its own folders", path)
			}
		}
	}
}

// ctrCNIFolders makes the CNI folders ctr will see (net.d with the
// conflist, bin with the plugins, ipam) and the wrapper that mounts them;
// policy, when set, replaces the conflist's portcullis policy.
func ctrCNIFolders(t *testing.T, stateDir, plugin string, policy map[string]any) (dir, network, logFile, wrapper string) {
	t.Helper()
	dir = t.TempDir()
	for _, sub := range []string{"net.d", "bin", "ipam"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", plugin} {
		if err := os.Symlink(p, filepath.Join(dir, "bin", filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	network = "pc-ctrd-" + testenv.Suffix()
	logFile = filepath.Join(dir, "portcullis.log")
	conflist := filepath.Join(dir, "net.d", "10-portcullis.conflist")
	writeConflist(t, conflist, network, stateDir, logFile, filepath.Join(dir, "ipam"))
	if policy != nil {
		var list map[string]any
		readJSON(t, conflist, &list)
		plugins := list["plugins"].([]any)
		plugins[len(plugins)-1].(map[string]any)["policy"] = policy
		writeJSON(t, conflist, list)
	}
	wrapper = filepath.Join(dir, "ctr-cni")
	if err := os.WriteFile(wrapper, []byte(ctrCNIWrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, network, logFile, wrapper
}

// writeConflist writes conf/bridge-portcullis.conflist with the test's
// names, subnet and folders, and a policy that allows only runcPort.
func writeConflist(t *testing.T, path, network, stateDir, logFile, ipamDir string) {
	t.Helper()
	var list map[string]any
	readJSON(t, filepath.Join(testenv.RepoRoot(t), "conf", "bridge-portcullis.conflist"), &list)
	list["name"] = network
	plugins := list["plugins"].([]any)
	bridge, pc := plugins[0].(map[string]any), plugins[len(plugins)-1].(map[string]any)
	bridge["bridge"] = "pcbr" + testenv.Suffix()
	bridge["ipMasq"] = false
	ipam := bridge["ipam"].(map[string]any)
	ipam["ranges"] = [][]map[string]string{{{"subnet": "10.96.0.0/24"}}}
	ipam["dataDir"] = ipamDir
	pc["stateDir"], pc["logFile"] = stateDir, logFile
	pc["policy"] = map[string]any{"allowedPorts": []string{runcPort}}
	writeJSON(t, path, list)
}

// startContainerd starts a containerd of the test's own (root, state,
// socket; the CRI plugin off), stopped by its PID at cleanup, and returns
// its socket and a ctr runner for it. The CNI and OCI hook tests share it.
func startContainerd(t *testing.T) (string, func(args ...string) (string, error)) {
	t.Helper()
	testenv.RequireCommand(t, "containerd", "containerd")
	testenv.RequireCommand(t, "ctr", "containerd")
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	config := filepath.Join(dir, "config.toml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "opt"))), 0o644)
	testenv.Start(t, cgroup.Cgroup{}, exec.Command("containerd", "--config", config))
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"--address", sock}, args...)...).CombinedOutput()
		return string(out), err
	}
	for i := 0; ; i++ {
		out, err := ctr("version")
		if err == nil {
			return sock, ctr
		}
		if i == 100 {
			t.Fatalf("containerd did not start: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cniAttachments(t *testing.T, stateDir string) []state.Attachment {
	t.Helper()
	s, err := state.Open(stateDir, false)
	if errors.Is(err, state.ErrNotLoaded) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list, err := s.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// taskPID is the task's init pid, from ctr task ls.
func taskPID(t *testing.T, ctr func(args ...string) (string, error), id string) int {
	t.Helper()
	out, err := ctr("task", "ls")
	if err != nil {
		t.Fatalf("ctr task ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			var pid int
			fmt.Sscan(f[1], &pid)
			return pid
		}
	}
	t.Fatalf("task %s not in ctr task ls:\n%s", id, out)
	return 0
}

func readLog(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}
