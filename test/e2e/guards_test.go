package e2e

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

// TestContainerdCNIConnectionCapsAndEgress runs a container with `ctr run
// --cni` under containerd, the network's policy capping connections and
// denying one port, and meets both from a process run in the container
// with `ctr task exec`. The listeners are on the bridge's address in the
// namespace that stands in for the host.
func TestContainerdCNIConnectionCapsAndEgress(t *testing.T) {
	for _, cmd := range [][2]string{{"ctr", "containerd"}, {"unshare", "util-linux"}} {
		testenv.RequireCommand(t, cmd[0], cmd[1])
	}
	stateDir := testenv.StateDir(t)
	plugin := testenv.Binary(t, "./plugins/portcullis")
	probe := testenv.Binary(t, "./test/sockprobe")
	host := testenv.NewNetNS(t)
	sock, ctr := startContainerd(t)
	dir, _, logFile, wrapper := ctrCNIFolders(t, stateDir, plugin, map[string]any{
		"connectionLimits": map[string]any{"perDestination": 2},
		"egress":           []any{map[string]any{"action": "deny", "cidr": "10.96.0.1/32", "ports": []string{"13061"}}},
	})
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	copyFile(t, testenv.RequireCommand(t, "busybox", "busybox-static"), filepath.Join(rootfs, "bin", "busybox"))
	os.Symlink("busybox", filepath.Join(rootfs, "bin", "sleep"))
	copyFile(t, testenv.Binary(t, "./test/connprobe"), filepath.Join(rootfs, "bin", "connprobe"))
	id := "pc-ctrd-guards-" + testenv.Suffix()
	t.Cleanup(func() {
		ctr("task", "kill", "-s", "KILL", id)
		ctr("task", "rm", "-f", id)
		ctr("container", "rm", id)
	})
	run := testenv.Start(t, cgroup.Cgroup{}, host.Command("unshare", "--mount", "--propagation", "private", "--",
		wrapper, dir, "ctr", "--address", sock, "run", "--cni", "--rootfs", rootfs, id, "/bin/sleep", "1000"))
	for i := 0; len(cniAttachments(t, stateDir)) != 1; i++ {
		if i == 200 {
			t.Fatalf("no attachment after ctr run --cni; ctr says: %s\nplugin log:\n%s", run.Stderr(), readLog(logFile))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; ; i++ {
		out, _ := ctr("task", "ls")
		if strings.Contains(out, "RUNNING") {
			break
		}
		if i == 200 {
			t.Fatalf("task %s is not running:\n%s", id, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The bridge holds the gateway address 10.96.0.1 once ADD has run.
	for _, port := range []string{"13060", "13061"} {
		l := testenv.Start(t, cgroup.Cgroup{}, host.Command(probe, "listen", "-addr", "10.96.0.1:"+port))
		if r := testenv.ParseProbe(t, l.Line(t, 5*time.Second)); !r.OK {
			t.Fatalf("listen on 10.96.0.1:%s: %+v", port, r)
		}
	}

	// Answers to an interactive pipe never came back through ctr task
	// exec here, so the commands go in one script; connprobe runs them in
	// order.
	probeCmd := exec.Command("ctr", "--address", sock, "task", "exec", "--exec-id", "probe", id, "/bin/connprobe")
	probeCmd.Stdin = strings.NewReader(strings.Join([]string{
		"connect tcp 10.96.0.1:13061", // denied by the rule
		"connect tcp 10.96.0.1:13060", // 1
		"connect tcp 10.96.0.1:13060", // 2
		"connect tcp 10.96.0.1:13060", // over perDestination
		"close 1",
		"connect tcp 10.96.0.1:13060", // the freed slot
	}, "\n") + "\n")
	out, err := probeCmd.Output()
	if err != nil {
		t.Fatalf("ctr task exec connprobe: %v\n%s", err, out)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r guardtest.Reply
		json.Unmarshal([]byte(line), &r)
		got = append(got, fmt.Sprintf("%v%s", r.OK, r.Errno))
	}
	if want := []string{"falseEPERM", "true", "true", "falseEAGAIN", "true", "true"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("connprobe in the container answered %v, want %v\n%s", got, want, out)
	}

	// Killing the task makes ctr run DEL: nothing of the container stays.
	if out, err := ctr("task", "kill", "-s", "KILL", id); err != nil {
		t.Fatalf("ctr task kill: %v\n%s", err, out)
	}
	run.Wait(t, 30*time.Second)
	if list := cniAttachments(t, stateDir); len(list) != 0 {
		t.Fatalf("attachments after the task was killed: %+v", list)
	}
	for _, m := range []string{"limits", "conn_counts", "conn_slots"} {
		if dump := strings.TrimSpace(testenv.Run(t, "bpftool", "-j", "map", "dump", "pinned", filepath.Join(stateDir, "maps", m))); dump != "[]" {
			t.Fatalf("map %s after DEL: %s", m, dump)
		}
	}
}
