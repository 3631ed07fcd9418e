package e2e

// Kubernetes pods through containerd's CRI plugin, driven by crictl the way
// kubelet drives it: RunPodSandbox, CreateContainer, StartContainer,
// ExecSync, StopPodSandbox, RemovePodSandbox.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/crienv"
	"github.com/portcullis-net/portcullis/test/testenv"
)

const (
	criPort   = "20601" // in the network's allowedPorts
	criDenied = "20602" // outside it
	criSubnet = "10.20.0.0/24"
)

// criEnv is a containerd of the test's own with the CRI plugin (crienv),
// with the test's CNI conf and bin folders: bridge + host-local +
// portcullis.
type criEnv struct {
	*crienv.Containerd
	t        *testing.T
	dir      string
	host     *testenv.NetNS
	stateDir string
	logFile  string
	probe    string
}

type criOptions struct {
	// runtime is extra TOML for the runc runtime's section.
	runtime string
}

func startCRI(t *testing.T, opts criOptions) *criEnv {
	t.Helper()
	testenv.RequireCommand(t, "nsenter", "util-linux")
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			t.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	e := &criEnv{t: t, dir: t.TempDir(), host: testenv.NewNetNS(t), stateDir: testenv.StateDir(t), probe: testenv.Binary(t, "./test/sockprobe")}
	e.logFile = filepath.Join(e.dir, "portcullis.log")
	for _, sub := range []string{"net.d", "bin", "ipam"} {
		os.MkdirAll(filepath.Join(e.dir, sub), 0o755)
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback", testenv.Binary(t, "./plugins/portcullis")} {
		if err := os.Symlink(p, filepath.Join(e.dir, "bin", filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	network := "pc-cri-" + testenv.Suffix()
	conflist := filepath.Join(e.dir, "net.d", "10-portcullis.conflist")
	writeConflist(t, conflist, network, e.stateDir, e.logFile, filepath.Join(e.dir, "ipam"))
	var list map[string]any
	readJSON(t, conflist, &list)
	plugins := list["plugins"].([]any)
	plugins[0].(map[string]any)["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": criSubnet}}}
	plugins[len(plugins)-1].(map[string]any)["policy"] = map[string]any{"allowedPorts": []string{criPort}}
	writeJSON(t, conflist, list)
	e.Containerd = crienv.Start(t, e.host, crienv.Options{CNIConfDir: filepath.Join(e.dir, "net.d"), CNIBinDir: filepath.Join(e.dir, "bin"), Runtime: opts.runtime})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", readLog(e.logFile))
		}
	})
	return e
}

func (e *criEnv) mustCrictl(args ...string) string {
	e.t.Helper()
	out, err := e.Crictl(args...)
	if err != nil {
		e.t.Fatalf("crictl %s: %v\n%s\nplugin log:\n%s", strings.Join(args, " "), err, out, readLog(e.logFile))
	}
	return out
}

// pod is a sandbox created as kubelet creates one (crienv.PodConfig).
type pod struct {
	e      *criEnv
	id     string
	uid    string
	config string
}

func (e *criEnv) runPod(name string, hostNetwork bool, annotations map[string]string) *pod {
	e.t.Helper()
	p := &pod{e: e}
	p.config, p.uid = e.PodConfig(name, hostNetwork, annotations)
	p.id = e.mustCrictl("runp", p.config)
	return p
}

// container creates and starts an app container in the pod.
func (p *pod) container(name string, command ...string) string {
	p.e.t.Helper()
	config := filepath.Join(p.e.dir, name+"-ctr.json")
	writeJSON(p.e.t, config, map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": crienv.BusyboxImage},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	id := p.e.mustCrictl("create", p.id, config, p.config)
	p.e.mustCrictl("start", id)
	return id
}

// inspect returns the sandbox's pid, network namespace path and IP.
func (p *pod) inspect() (pid int, netns, ip string) {
	p.e.t.Helper()
	var out struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			Pid         int `json:"pid"`
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	data := p.e.mustCrictl("inspectp", "-o", "json", p.id)
	if err := json.Unmarshal([]byte(data), &out); err != nil {
		p.e.t.Fatalf("crictl inspectp: %v\n%s", err, data)
	}
	for _, ns := range out.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			netns = ns.Path
		}
	}
	return out.Info.Pid, netns, out.Status.Network.IP
}

// execFails runs argv in the container and returns its output, which
// must come with a failure.
func (p *pod) execFails(cid string, argv ...string) string {
	p.e.t.Helper()
	out, err := p.e.Crictl(append([]string{"exec", "-s", "--timeout", "10", cid}, argv...)...)
	if err == nil {
		p.e.t.Fatalf("crictl exec %s %v succeeded: %s", cid, argv, out)
	}
	return out
}

// stopAndRemove is StopPodSandbox then RemovePodSandbox.
func (p *pod) stopAndRemove() {
	p.e.t.Helper()
	p.e.mustCrictl("stopp", p.id)
	p.e.mustCrictl("rmp", p.id)
}

// requireClean checks that nothing is left of any attachment: no record,
// no map entry, no link folder, no namespace programs.
func (e *criEnv) requireClean() {
	e.t.Helper()
	if list := cniAttachments(e.t, e.stateDir); len(list) != 0 {
		e.t.Fatalf("attachments left: %+v", list)
	}
	for _, m := range []string{"policies", "portmaps", "attachments"} {
		if dump := strings.TrimSpace(testenv.Run(e.t, "bpftool", "-j", "map", "dump", "pinned", filepath.Join(e.stateDir, "maps", m))); dump != "[]" {
			e.t.Fatalf("map %s left: %s", m, dump)
		}
	}
	if links, _ := os.ReadDir(filepath.Join(e.stateDir, "cgroups")); len(links) != 0 {
		e.t.Fatalf("link folders left: %v", links)
	}
	if links, _ := filepath.Glob(filepath.Join(e.stateDir, "netns", "links", "*")); len(links) != 0 {
		e.t.Fatalf("namespace links left on the cgroup root: %v", links)
	}
}

// podCounters is one attachment's line of portcullisctl stats -o json.
type podCounters struct{ stats.Attachment }

func (a podCounters) cell(direction, protocol string) stats.Counter {
	for _, c := range a.Traffic {
		if c.Direction == direction && c.Family == "ipv4" && c.Protocol == protocol {
			return c
		}
	}
	return stats.Counter{}
}

// podTraffic is what portcullisctl stats -o json shows for attachment id.
func podTraffic(t *testing.T, stateDir, id string) podCounters {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t, "./cmd/portcullisctl"), "stats", "--state-dir", stateDir, "--id", id, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("portcullisctl stats: %v\n%s", err, out)
	}
	var list []stats.Attachment
	if err := json.Unmarshal(out, &list); err != nil || len(list) != 1 {
		t.Fatalf("portcullisctl stats -o json: %v\n%s", err, out)
	}
	return podCounters{list[0]}
}

// TestCRIPod: a pod through containerd 1.6's CRI plugin starts with
// portcullis chained (ADD runs before the sandbox task exists and gets no
// cgroupPath), and every container of the pod is covered: the app
// containers, one started later, a process exec'd in, and the sandbox.
// StopPodSandbox and RemovePodSandbox leave nothing.
func TestCRIPod(t *testing.T) {
	e := startCRI(t, criOptions{})
	p := e.runPod("web", false, nil)
	pid, netns, ip := p.inspect()
	if !strings.HasPrefix(ip, "10.20.0.") || netns == "" {
		t.Fatalf("sandbox ip %q netns %q, want an address of %s and a namespace", ip, netns, criSubnet)
	}
	list := cniAttachments(t, e.stateDir)
	if len(list) != 1 || !list[0].KeyedByNetNS() || list[0].NetNS != netns || list[0].Policy.Addresses[0].String() != ip {
		t.Fatalf("attachments %+v, want one keyed by the pod's namespace %s with address %s", list, netns, ip)
	}

	// The app container: a server on the allowed port, bound to the
	// wildcard, is pinned to the pod's IP and reachable from the host.
	app := p.container("app", "/bin/nc", "-ll", "-p", criPort, "-e", "/bin/echo", "app")
	// The namespace is mounted in containerd's private mount namespace.
	podNS := &testenv.NetNS{Path: fmt.Sprintf("/proc/%d/ns/net", pid)}
	waitListeningOn(t, podNS, criPort, ip+":"+criPort, "[::ffff:"+ip+"]:"+criPort)
	out, _ := e.host.Command(e.probe, "connect", "-addr", ip+":"+criPort).Output()
	if r := testenv.ParseProbe(t, strings.TrimSpace(string(out))); !r.OK || r.Reply != "app" {
		t.Fatalf("connect from the host to %s:%s: %+v", ip, criPort, r)
	}
	// The pod's traffic is counted (the namespace copy's cgroup_skb
	// programs): the host's connection came in, and the reply went out.
	a := podTraffic(t, e.stateDir, list[0].ID)
	rcvd, sent := a.cell("ingress", "tcp"), a.cell("egress", "tcp")
	if rcvd.Packets < 2 || sent.Packets < 2 || sent.Bytes < 4+2*40 {
		t.Fatalf("pod %s after one connection: ipv4 tcp received %+v, sent %+v; want at least the handshake and the reply", list[0].ID, rcvd, sent)
	}
	// A process exec'd into it: EPERM outside allowedPorts.
	if out := p.execFails(app, "/bin/nc", "-l", "-p", criDenied); !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("nc -l -p %s exec'd in the app container: %q, want bind: Operation not permitted", criDenied, out)
	}
	// A second app container, started later, in a sibling cgroup.
	second := p.container("second", "/bin/nc", "-l", "-p", criDenied)
	var status string
	for i := 0; i < 100; i++ {
		status = e.mustCrictl("inspect", "-o", "go-template", "--template", "{{.status.state}} {{.status.exitCode}}", second)
		if strings.HasPrefix(status, "CONTAINER_EXITED") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	logs, _ := e.Crictl("logs", second)
	if !strings.HasPrefix(status, "CONTAINER_EXITED") || !strings.Contains(logs, "bind: Operation not permitted") {
		t.Fatalf("second container listening on %s: %s, logs %q; want it to exit with bind: Operation not permitted", criDenied, status, logs)
	}
	// The sandbox's own cgroup (the pause container's).
	sandboxCg, err := cgroup.OfPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	appPid := containerPid(t, e, app)
	if appCg, _ := cgroup.OfPID(appPid); appCg.ID == sandboxCg.ID || filepath.Dir(appCg.Path) != filepath.Dir(sandboxCg.Path) ||
		!strings.HasSuffix(filepath.Dir(appCg.Path), "/kubepods/besteffort/pod"+p.uid) {
		t.Fatalf("app cgroup %s, sandbox cgroup %s: want siblings under the pod's cgroup", appCg.Path, sandboxCg.Path)
	}
	inSandbox := testenv.Start(t, sandboxCg, podNS.Command(e.probe, "listen", "-addr", "0.0.0.0:"+criDenied))
	if r := testenv.ParseProbe(t, inSandbox.Line(t, 5*time.Second)); r.OK || r.Errno != "EPERM" {
		t.Fatalf("listen on %s in the sandbox's cgroup: %+v, want EPERM", criDenied, r)
	}
	inSandbox.Kill()

	p.stopAndRemove()
	e.requireClean()
	log := readLog(e.logFile)
	for _, want := range []string{"ADD container=" + p.id, "DEL container=" + p.id, "attached "} {
		if !strings.Contains(log, want) {
			t.Fatalf("plugin log has no %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "error") {
		t.Fatalf("plugin log has an error:\n%s", log)
	}
}

// containerPid is a container's init pid from crictl inspect.
func containerPid(t *testing.T, e *criEnv, id string) int {
	t.Helper()
	var pid int
	fmt.Sscan(e.mustCrictl("inspect", "-o", "go-template", "--template", "{{.info.pid}}", id), &pid)
	if pid <= 0 {
		t.Fatalf("no pid for container %s", id)
	}
	return pid
}

// TestCRITwoPods: two pods at once each get their own policy and address;
// removing one leaves the other's policy and the namespace programs in
// place, removing the last takes the programs off the cgroup root.
func TestCRITwoPods(t *testing.T) {
	e := startCRI(t, criOptions{})
	a, b := e.runPod("a", false, nil), e.runPod("b", false, nil)
	_, nsA, ipA := a.inspect()
	_, nsB, ipB := b.inspect()
	if ipA == ipB || nsA == nsB {
		t.Fatalf("pods share ip %s / netns %s", ipA, nsA)
	}
	if list := cniAttachments(t, e.stateDir); len(list) != 2 {
		t.Fatalf("attachments %+v, want two", list)
	}
	a.stopAndRemove()
	appB := b.container("app", "/bin/sleep", "1000")
	if out := b.execFails(appB, "/bin/nc", "-l", "-p", criDenied); !strings.Contains(out, "bind: Operation not permitted") {
		t.Fatalf("nc -l -p %s in pod b after pod a went: %q", criDenied, out)
	}
	s, err := state.Open(e.stateDir, false)
	if err != nil {
		t.Fatal(err)
	}
	list, _ := s.Attachments()
	s.Close()
	if len(list) != 1 || list[0].NetNS != nsB {
		t.Fatalf("attachments %+v, want pod b's only", list)
	}
	b.stopAndRemove()
	e.requireClean()
}

// waitListeningOn waits until exactly one socket listens on port, at one of
// the addresses given.
func waitListeningOn(t *testing.T, netns *testenv.NetNS, port string, oneOf ...string) {
	t.Helper()
	var got []string
	for i := 0; i < 100; i++ {
		if got = listening(t, netns, port); len(got) == 1 && slices.Contains(oneOf, got[0]) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("TCP listeners on port %s: %v, want one of %v", port, got, oneOf)
}

// TestCRIHostNetworkPod: a hostNetwork pod gets no CNI call; its policy
// comes through the OCI hook, named in containerd's base_runtime_spec, from
// a pod annotation that pod_annotations passes to every container of the
// pod. All its containers share the pod's policy.
func TestCRIHostNetworkPod(t *testing.T) {
	hook := testenv.Binary(t, "./hooks/portcullis-hook")
	dir := t.TempDir()
	stateDir := testenv.StateDir(t)
	policies := filepath.Join(dir, "policies.d")
	os.MkdirAll(policies, 0o755)
	os.WriteFile(filepath.Join(policies, "hostpod.json"), []byte(`{"addresses": ["127.0.20.1"], "allowedPorts": ["`+criPort+`"]}`), 0o644)
	// The base spec: containerd's default with the hooks added.
	var spec map[string]any
	out, err := exec.Command("ctr", "oci", "spec").Output()
	if err != nil {
		t.Fatalf("ctr oci spec: %v", err)
	}
	json.Unmarshal(out, &spec)
	// containerd's default keeps CAP_NET_RAW, which the hook refuses for a
	// host-network container with addresses (packet sockets pass no hook):
	// the base spec drops it, as docs/kubernetes.md says.
	dropNetRaw(spec)
	env := []string{"PORTCULLIS_STATE_DIR=" + stateDir, "PORTCULLIS_POLICIES_DIR=" + policies}
	spec["hooks"] = map[string]any{
		"createRuntime": []any{map[string]any{"path": hook, "args": []string{"portcullis-hook", "createRuntime"}, "env": env}},
		"poststop":      []any{map[string]any{"path": hook, "args": []string{"portcullis-hook", "poststop"}, "env": env}},
	}
	base := filepath.Join(dir, "base-spec.json")
	writeJSON(t, base, spec)
	e := startCRI(t, criOptions{runtime: fmt.Sprintf("  base_runtime_spec = %q\n  pod_annotations = [\"io.portcullis.*\"]", base)})

	p := e.runPod("hostweb", true, map[string]string{"io.portcullis.policy-name": "hostpod"})
	app := p.container("app", "/bin/nc", "-ll", "-p", criPort, "-e", "/bin/echo", "hostapp")
	second := p.container("second", "/bin/sleep", "1000")
	waitListeningOn(t, e.host, criPort, "127.0.20.1:"+criPort, "[::ffff:127.0.20.1]:"+criPort)
	for _, cid := range []string{app, second} {
		if out := p.execFails(cid, "/bin/nc", "-l", "-p", criDenied); !strings.Contains(out, "bind: Operation not permitted") {
			t.Fatalf("nc -l -p %s in container %s of the hostNetwork pod: %q, want bind: Operation not permitted", criDenied, cid, out)
		}
	}
	// One attachment per app container, each on its own cgroup (siblings
	// under the pod's), with the pod's policy. containerd 1.6 builds the
	// sandbox's spec without base_runtime_spec, so the hook does not run
	// for the pause container (it only sleeps).
	list := cniAttachments(t, stateDir)
	t.Logf("sandbox %s, app %s, second %s; attachments %v", p.id, app, second, attachmentIDs(list))
	if ids := attachmentIDs(list); len(ids) != 2 || !slices.Contains(ids, app) || !slices.Contains(ids, second) {
		t.Fatalf("attachments %v, want the app containers' %s and %s", ids, app, second)
	}
	for _, a := range list {
		if a.Owner != "oci-hook" || a.KeyedByNetNS() || a.Policy.Addresses[0].String() != "127.0.20.1" {
			t.Fatalf("attachment %+v, want the hook's, on a cgroup, with the pod's policy", a)
		}
	}
	p.stopAndRemove()
	if list := cniAttachments(t, stateDir); len(list) != 0 {
		t.Fatalf("attachments after the pod was removed: %+v", list)
	}
}

// dropNetRaw removes CAP_NET_RAW from every capability set of a runtime
// spec decoded as JSON.
func dropNetRaw(spec map[string]any) {
	process, _ := spec["process"].(map[string]any)
	caps, _ := process["capabilities"].(map[string]any)
	for set, list := range caps {
		names, _ := list.([]any)
		kept := []any{}
		for _, name := range names {
			if name != "CAP_NET_RAW" {
				kept = append(kept, name)
			}
		}
		caps[set] = kept
	}
}
