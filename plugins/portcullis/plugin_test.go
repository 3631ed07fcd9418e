package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/portcullis-net/portcullis/pkg/cni"
	"github.com/portcullis-net/portcullis/test/testenv"
)

const (
	allowedPort = "24601" // in the network's and the web policy's allowedPorts
	deniedPort  = "24602" // in neither
	webPort     = "24603" // only in the web policy's
	mappedFrom  = "8080"  // containerPort of the runtime's port mapping
	mappedTo    = "28080" // its hostPort
)

const chainKeys = `"capabilities": {"portMappings": true, "cgroupPath": true},
	"policy": {"allowedPorts": ["` + allowedPort + `"]},
	"policies": {"web": {"allowedPorts": ["` + allowedPort + `", "` + webPort + `"]}},
	"services": [{"name": "db", "frontends": ["10.96.0.10:5432"], "backends": ["10.99.0.250:5432"]}]`

// TestLifecycle runs ADD, CHECK and DEL through libcni on the full chain
// and looks at the result from outside: portcullisctl status, bpftool, and
// a server in the container's cgroup and namespace.
func TestLifecycle(t *testing.T) {
	c := newChain(t, chainKeys)
	k := c.container(true)
	k.rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {cni.ArgPolicy, "web"}}
	k.rt.CapabilityArgs["portMappings"] = []map[string]any{{"containerPort": 8080, "hostPort": 28080, "protocol": "tcp"}}
	ip := c.mustAdd(k)

	// ADD attached the web policy, the bridge's address and the runtime's
	// mapping to the container's network namespace, owned by this network.
	list := c.attachments()
	if len(list) != 1 {
		t.Fatalf("attachments after ADD: %+v", list)
	}
	a := list[0]
	policy, _ := json.Marshal(a.Policy)
	wantPolicy := `{"addresses":["` + ip + `"],"allowedPorts":["` + allowedPort + `","` + webPort + `"],"portMappings":[{"containerPort":8080,"hostPort":28080,"protocol":"tcp"}]}`
	if a.ID != k.id+"-eth0" || a.CgroupID != k.key(t) || a.CgroupPath != "" || a.Owner != "cni:"+c.name || a.NetNS != k.ns.Path || string(policy) != wantPolicy {
		t.Fatalf("attachment %+v policy %s\nwant id %s-eth0, keyed by netns %s, owner cni:%s, policy %s", a, policy, k.id, k.ns.Path, c.name, wantPolicy)
	}
	// ADD applied the services the conf declares.
	if out, err := exec.Command(c.ctl, "service", "show", "db", "--state-dir", c.stateDir).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "10.96.0.10:5432") || !strings.Contains(string(out), "10.99.0.250:5432") {
		t.Fatalf("portcullisctl service show db after ADD: %v\n%s", err, out)
	}
	// The programs are on the cgroup v2 root, not on the container's.
	if progs := cgroupPrograms(t, k.cg); progs != "" {
		t.Fatalf("programs on the container's cgroup %s:\n%s", k.cg.Path, progs)
	}
	links := c.netnsLinks()
	for _, name := range []string{"bind4", "bind6", "connect4", "connect6", "sendmsg4", "sendmsg6", "getsockname4", "getsockname6"} {
		if !slices.Contains(links, name) {
			t.Fatalf("namespace links %v have no %s", links, name)
		}
	}

	// A wildcard bind in the container is pinned to its address and
	// reachable from the host.
	_, r := c.listen(k, "0.0.0.0:"+allowedPort)
	if !r.OK || r.Local != ip+":"+allowedPort {
		t.Fatalf("listen on 0.0.0.0:%s in the container: %+v, want it pinned to %s", allowedPort, r, ip)
	}
	if got := k.ns.Listening(t, "tcp", 24601); !slices.Equal(got, []string{ip + ":" + allowedPort}) {
		t.Fatalf("ss in the container shows %v listening, want %s:%s", got, ip, allowedPort)
	}
	if r := c.connect(ip + ":" + allowedPort); !r.OK || r.Reply != k.id {
		t.Fatalf("connect from the host to %s:%s: %+v", ip, allowedPort, r)
	}
	// The named policy's extra port is allowed; a port outside it is not.
	if _, r := c.listen(k, "0.0.0.0:"+webPort); !r.OK {
		t.Fatalf("listen on %s (in the web policy): %+v", webPort, r)
	}
	if _, r := c.listen(k, "0.0.0.0:"+deniedPort); r.OK || r.Errno != "EPERM" {
		t.Fatalf("listen on %s (outside the policy): %+v, want EPERM", deniedPort, r)
	}
	// The runtime's port mapping publishes the host port: the container
	// binds containerPort unchanged in its own namespace, and a host
	// process reaches it on 127.0.0.1:hostPort and on the host's address
	// (the bridge's gateway), with getpeername showing what it dialled.
	if _, r := c.listen(k, "0.0.0.0:"+mappedFrom); !r.OK || r.Local != ip+":"+mappedFrom {
		t.Fatalf("listen on mapped port %s: %+v", mappedFrom, r)
	}
	if got := k.ns.Listening(t, "tcp", 8080); !slices.Equal(got, []string{ip + ":" + mappedFrom}) {
		t.Fatalf("ss shows %v on the container port, want %s:%s", got, ip, mappedFrom)
	}
	for _, dial := range []string{"127.0.0.1:" + mappedTo, "10.99.0.1:" + mappedTo, "[::1]:" + mappedTo} {
		if r := c.connect(dial); !r.OK || r.Reply != k.id || r.Peer != dial {
			t.Fatalf("connect from the host to the published port %s: %+v, want %s's reply with peer %s", dial, r, k.id, dial)
		}
	}
	// A process in the same namespace but another cgroup is covered too.
	other := testenv.Start(t, testenv.Cgroup(t, "cni-other"), k.ns.Command(c.probe, "listen", "-addr", "0.0.0.0:"+deniedPort))
	if r := testenv.ParseProbe(t, other.Line(t, 5e9)); r.OK || r.Errno != "EPERM" {
		t.Fatalf("listen on %s in another cgroup of the namespace: %+v, want EPERM", deniedPort, r)
	}
	other = testenv.Start(t, testenv.Cgroup(t, "cni-other"), k.ns.Command(c.probe, "listen", "-addr", "0.0.0.0:0"))
	if r := testenv.ParseProbe(t, other.Line(t, 5e9)); !r.OK || !strings.HasPrefix(r.Local, ip+":") {
		t.Fatalf("listen on 0.0.0.0:0 in another cgroup of the namespace: %+v, want it pinned to %s", r, ip)
	}
	other.Kill()

	// CHECK passes, then fails once a link is removed by hand.
	if err := c.check(k); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	removed := filepath.Join(c.stateDir, "netns", "links", "connect4")
	if err := os.Remove(removed); err != nil {
		t.Fatal(err)
	}
	err := c.check(k)
	if err == nil {
		t.Fatal("CHECK passed with a link removed")
	}
	if e := asCNIError(t, err); e.Code != cni.ErrCheckFailed || !strings.Contains(e.Msg, "namespace link connect4 is not pinned") {
		t.Fatalf("CHECK with a link removed: code %d %q", e.Code, e.Msg)
	}

	// DEL removes everything, and a second DEL succeeds.
	if err := c.del(k); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	c.requireGone(k)
	if total, n := c.totalEntries(); total != 0 {
		t.Fatalf("map entries left after DEL: %v", n)
	}
	if folders := c.linkFolders(); len(folders) != 0 {
		t.Fatalf("link folders left after DEL: %v", folders)
	}
	if links := c.netnsLinks(); len(links) != 0 {
		t.Fatalf("namespace links left after DEL: %v", links)
	}
	// The container's binds are no longer pinned or refused.
	if _, r := c.listen(k, "0.0.0.0:24604"); !r.OK || r.Local != "0.0.0.0:24604" {
		t.Fatalf("listen on 0.0.0.0:24604 after DEL: %+v, want an unpinned bind", r)
	}
	if err := c.del(k); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	log, _ := os.ReadFile(c.logFile)
	for _, want := range []string{"ADD container=" + k.id, "attached " + a.ID, "CHECK container=" + k.id, "detached " + a.ID, "nothing to do: " + a.ID + " is not attached"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log file has no %q:\n%s", want, log)
		}
	}
}

// TestCgroupPathCapability: ADD needs no process in the namespace (CRI
// runtimes call ADD before the sandbox process exists); a cgroupPath the
// runtime passes is accepted, and the policy still follows the namespace.
func TestCgroupPathCapability(t *testing.T) {
	c := newChain(t, chainKeys)
	k := c.container(false)
	k.rt.CapabilityArgs["cgroupPath"] = k.cg.Path
	ip := c.mustAdd(k)
	list := c.attachments()
	if len(list) != 1 || list[0].CgroupID != k.key(t) {
		t.Fatalf("attachments %+v, want one keyed by %s", list, k.ns.Path)
	}
	// The container's first process starts after ADD.
	testenv.Start(t, k.cg, k.ns.Command("sleep", "1000"))
	if _, r := c.listen(k, "0.0.0.0:"+allowedPort); !r.OK || r.Local != ip+":"+allowedPort {
		t.Fatalf("listen in the container: %+v, want pinned to %s", r, ip)
	}
	if _, r := c.listen(k, "0.0.0.0:"+webPort); r.Errno != "EPERM" {
		t.Fatalf("listen on %s without the web policy: %+v, want EPERM", webPort, r)
	}
	if err := c.check(k); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// The conf changed since ADD: CHECK says the policy differs.
	changed := newChainLike(t, c, strings.Replace(chainKeys, `"policy": {"allowedPorts": ["`+allowedPort+`"]}`, `"policy": {"allowedPorts": ["9999"]}`, 1))
	err := changed.check(k)
	if e := asCNIError(t, err); e.Code != cni.ErrCheckFailed || !strings.Contains(e.Msg, `but the conf now gives {"addresses":["`+ip+`"],"allowedPorts":["9999"]}`) {
		t.Fatalf("CHECK with another policy: code %d %q", e.Code, e.Msg)
	}
	if err := c.del(k); err != nil {
		t.Fatal(err)
	}
	c.requireGone(k)
}

// newChainLike is c with other portcullis keys: the same network name,
// state, host namespace and libcni cache.
func newChainLike(t *testing.T, c *chain, portcullisKeys string) *chain {
	t.Helper()
	var conf map[string]any
	json.Unmarshal(c.list.Bytes, &conf)
	plugins := conf["plugins"].([]any)
	var keys map[string]any
	if err := json.Unmarshal([]byte("{"+portcullisKeys+"}"), &keys); err != nil {
		t.Fatal(err)
	}
	last := plugins[len(plugins)-1].(map[string]any)
	for _, k := range []string{"policy", "policies", "capabilities"} {
		delete(last, k)
	}
	for k, v := range keys {
		last[k] = v
	}
	data, _ := json.Marshal(conf)
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	other := *c
	other.list = list
	return &other
}

// TestDelWhenGone: DEL succeeds when the container's netns, cgroup and
// process are gone, and when there is no state at all.
func TestDelWhenGone(t *testing.T) {
	c := newChain(t, chainKeys)
	k := c.container(true)
	c.mustAdd(k)
	testenv.RemoveCgroup(t, k.cg.Path) // kills the container's process
	testenv.Run(t, "ip", "netns", "del", k.ns.Name)
	if err := c.del(k); err != nil {
		t.Fatalf("DEL with the netns and cgroup gone: %v", err)
	}
	c.requireGone(k)
	if total, n := c.totalEntries(); total != 0 {
		t.Fatalf("map entries left: %v", n)
	}

	testenv.Run(t, c.ctl, "unload", "--state-dir", c.stateDir)
	if err := c.del(k); err != nil {
		t.Fatalf("DEL with no state loaded: %v", err)
	}
	if _, err := os.Stat(c.stateDir); !os.IsNotExist(err) {
		t.Fatalf("DEL loaded the state: %v", err)
	}
}

// TestGC: GC removes this network's attachments missing from
// cni.dev/valid-attachments and any CNI attachment whose network namespace
// is gone, and leaves the rest alone.
func TestGC(t *testing.T) {
	c := newChain(t, chainKeys)
	keep, stale, dead := c.container(true), c.container(true), c.container(true)
	for _, k := range []*container{keep, stale, dead} {
		c.mustAdd(k)
	}
	// Not the plugin's: an attachment made with portcullisctl.
	manual := testenv.Cgroup(t, "manual")
	policyFile := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(policyFile, []byte(`{"allowedPorts": ["1"]}`), 0o644)
	testenv.Run(t, c.ctl, "attach", "--state-dir", c.stateDir, "--cgroup", manual.Path, "--policy", policyFile, "--id", "manual")
	testenv.RemoveCgroup(t, dead.cg.Path)
	testenv.Run(t, "ip", "netns", "del", dead.ns.Name)

	// GC is a 1.1.0 verb and Debian's bridge stops at 1.0.0, so the GC
	// goes to a list of portcullis alone, under the same network name.
	// A fresh libcni cache keeps libcni from DELing the stale attachment
	// itself: what is removed is the plugin's own doing.
	gcList, err := libcni.ConfListFromBytes([]byte(`{"cniVersion": "1.1.0", "name": "` + c.name + `", "plugins": [
		{"type": "portcullis", "stateDir": "` + c.stateDir + `", "logFile": "` + c.logFile + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := libcni.NewCNIConfigWithCacheDir(c.cfg.Path, t.TempDir(), nil)
	valid := []types.GCAttachment{{ContainerID: keep.id, IfName: "eth0"}, {ContainerID: dead.id, IfName: "eth0"}}
	if err := c.inHost(func() error {
		return cfg.GCNetworkList(context.Background(), gcList, &libcni.GCArgs{ValidAttachments: valid})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	var ids []string
	for _, a := range c.attachments() {
		ids = append(ids, a.ID)
	}
	if want := []string{keep.attachmentID(), "manual"}; !slices.Equal(ids, sortedCopy(want)) {
		t.Fatalf("attachments after GC: %v, want %v", ids, want)
	}
	c.requireGone(stale)
	if links := c.netnsLinks(); len(links) == 0 {
		t.Fatal("GC detached the namespace programs of a valid attachment")
	}
	if n := c.mapEntries(); n["attachments"] != 2 || n["policies"] != 2 {
		t.Fatalf("map entries after GC: %v, want those of 2 attachments", n)
	}
	log, _ := os.ReadFile(c.logFile)
	for _, want := range []string{
		"removed " + stale.attachmentID() + " (cni:" + c.name + "): it is not in cni.dev/valid-attachments",
		"removed " + dead.attachmentID() + " (cni:" + c.name + "): its network namespace " + dead.ns.Path + " no longer exists",
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log has no %q:\n%s", want, log)
		}
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestStatusAndVersion: STATUS is ready on this host and not ready, with
// the reason, when bpffs cannot be used; VERSION lists 1.1.0.
func TestStatusAndVersion(t *testing.T) {
	c := newChain(t, "")
	cfg := libcni.NewCNIConfigWithCacheDir(c.cfg.Path, t.TempDir(), nil)
	status := func(stateDir string) error {
		list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion": "1.1.0", "name": "` + c.name + `", "plugins": [
			{"type": "portcullis", "stateDir": "` + stateDir + `"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		return c.inHost(func() error { return cfg.GetStatusNetworkList(context.Background(), list) })
	}
	if err := status(c.stateDir); err != nil {
		t.Fatalf("STATUS before the state is loaded: %v", err)
	}
	testenv.Run(t, c.ctl, "load", "--state-dir", c.stateDir)
	if err := status(c.stateDir); err != nil {
		t.Fatalf("STATUS with the state loaded: %v", err)
	}

	// A stateDir outside bpffs is refused with the conf, before
	// anything is mounted there.
	parent := t.TempDir()
	e := asCNIError(t, status(filepath.Join(parent, "state")))
	if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "stateDir: state directory "+parent+"/state is not on bpffs") {
		t.Fatalf("STATUS on a non-bpffs folder: code %d %q", e.Code, e.Msg)
	}
	// A state folder on bpffs that is not a portcullis state.
	broken := filepath.Join(filepath.Dir(c.stateDir), "portcullis-test-broken-"+testenv.Suffix())
	if err := os.Mkdir(broken, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(broken)
	e = asCNIError(t, status(broken))
	if e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "the state pinned in "+broken+" cannot be opened") {
		t.Fatalf("STATUS on a broken state: code %d %q", e.Code, e.Msg)
	}

	info, err := c.cfg.GetVersionInfo(context.Background(), "portcullis")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.SupportedVersions(), "1.1.0") {
		t.Fatalf("VERSION lists %v, want 1.1.0", info.SupportedVersions())
	}
}
