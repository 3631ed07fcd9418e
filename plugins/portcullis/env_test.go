package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/cni"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// The tests run the real chain: Debian's reference bridge and host-local
// plugins (/usr/lib/cni) first, the built portcullis binary last, driven
// through libcni the way a runtime drives them. Everything happens inside
// a "host" network namespace the test makes (the bridge, the host side of
// the veth pairs, the plugins themselves), and each container is a network
// namespace plus a cgroup of the test's own.

const refPluginDir = "/usr/lib/cni"

// chain is one network: a conflist of bridge + host-local + portcullis, its
// own state directory, log file and host namespace.
type chain struct {
	t        *testing.T
	host     *testenv.NetNS
	name     string
	stateDir string
	logFile  string
	plugin   string // the built plugin
	ctl      string // the built portcullisctl
	probe    string // the built sockprobe
	cfg      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	// networkEntries are map entries the conf itself owns (its services).
	networkEntries map[string]int
}

// newChain builds a network whose portcullis entry has the given
// portcullis-specific keys (policy, policies, capabilities...).
func newChain(t *testing.T, portcullisKeys string) *chain {
	t.Helper()
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(refPluginDir, p)); err != nil {
			t.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	testenv.RequireCommand(t, "bpftool", "bpftool")
	c := &chain{
		t:        t,
		host:     testenv.NewNetNS(t),
		name:     "pc-test-" + testenv.Suffix(),
		stateDir: testenv.StateDir(t),
		logFile:  filepath.Join(t.TempDir(), "portcullis.log"),
		plugin:   testenv.Binary(t, "./plugins/portcullis"),
		ctl:      testenv.Binary(t, "./cmd/portcullisctl"),
		probe:    testenv.Binary(t, "./test/sockprobe"),
	}
	if strings.Contains(portcullisKeys, `"services"`) {
		// chainKeys declares one service with one frontend and one
		// static backend.
		c.networkEntries = map[string]int{"svc_names": 1, "svc_frontends": 1, "svc_backends": 1}
	}
	if portcullisKeys != "" {
		portcullisKeys = ", " + portcullisKeys
	}
	// Debian 12's plugins speak CNI up to 1.0.0.
	conflist := fmt.Sprintf(`{
		"cniVersion": "1.0.0",
		"name": %q,
		"plugins": [
			{"type": "bridge", "bridge": "pcbr%s", "isGateway": true, "ipMasq": false,
			 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": %q}},
			{"type": "portcullis", "stateDir": %q, "logFile": %q %s}
		]}`, c.name, testenv.Suffix(), t.TempDir(), c.stateDir, c.logFile, portcullisKeys)
	var err error
	if c.list, err = libcni.ConfListFromBytes([]byte(conflist)); err != nil {
		t.Fatalf("conflist: %v\n%s", err, conflist)
	}
	c.cfg = libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(c.plugin), refPluginDir}, t.TempDir(), nil)
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(c.logFile)
			t.Logf("plugin log:\n%s", log)
		}
	})
	return c
}

// inHost runs fn on a thread inside the host namespace: the plugins libcni
// starts from it run there too.
func (c *chain) inHost(fn func() error) error {
	return ns.WithNetNSPath(c.host.Path, func(ns.NetNS) error { return fn() })
}

// container is a network namespace and a cgroup, optionally with a
// process in both (the runtime's container process, which is how the plugin
// finds the cgroup when the runtime passes no cgroupPath).
type container struct {
	id string
	ns *testenv.NetNS
	cg cgroup.Cgroup
	rt *libcni.RuntimeConf
}

func (c *chain) container(withProcess bool) *container {
	c.t.Helper()
	k := &container{id: "pc-" + testenv.Suffix(), ns: testenv.NewNetNS(c.t), cg: testenv.Cgroup(c.t, "cni")}
	if withProcess {
		testenv.Start(c.t, k.cg, k.ns.Command("sleep", "1000"))
	}
	k.rt = &libcni.RuntimeConf{ContainerID: k.id, NetNS: k.ns.Path, IfName: "eth0", CapabilityArgs: map[string]any{}}
	return k
}

// key is the policy key of the container's network namespace.
func (k *container) key(t *testing.T) uint64 {
	t.Helper()
	cookie, err := state.NetNSCookie(k.ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	return state.NetNSKey | cookie
}

// netnsLinks lists the namespace programs' pinned links.
func (c *chain) netnsLinks() []string {
	paths, _ := filepath.Glob(filepath.Join(c.stateDir, "netns", "links", "*"))
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	return names
}

// attachmentID is the id the plugin gives the container's attachment.
func (k *container) attachmentID() string { return cni.AttachmentID(k.id, k.rt.IfName) }

func (c *chain) add(k *container) (types.Result, error) {
	var res types.Result
	err := c.inHost(func() (err error) {
		res, err = c.cfg.AddNetworkList(context.Background(), c.list, k.rt)
		return err
	})
	return res, err
}

func (c *chain) mustAdd(k *container) string {
	c.t.Helper()
	res, err := c.add(k)
	if err != nil {
		c.t.Fatalf("ADD %s: %v", k.id, err)
	}
	return containerIP(c.t, res)
}

func (c *chain) check(k *container) error {
	return c.inHost(func() error { return c.cfg.CheckNetworkList(context.Background(), c.list, k.rt) })
}

func (c *chain) del(k *container) error {
	return c.inHost(func() error { return c.cfg.DelNetworkList(context.Background(), c.list, k.rt) })
}

// containerIP is the container's IPv4 address in a chain's result.
func containerIP(t *testing.T, res types.Result) string {
	t.Helper()
	data, _ := json.Marshal(res)
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	json.Unmarshal(data, &r)
	if len(r.IPs) == 0 {
		t.Fatalf("result without IPs: %s", data)
	}
	return strings.Split(r.IPs[0].Address, "/")[0]
}

// attachments is what `portcullisctl status -o json` shows.
func (c *chain) attachments() []state.Attachment {
	c.t.Helper()
	out, err := exec.Command(c.ctl, "status", "--state-dir", c.stateDir, "-o", "json").CombinedOutput()
	if err != nil {
		c.t.Fatalf("portcullisctl status: %v\n%s", err, out)
	}
	var report struct {
		Attachments []state.Attachment `json:"attachments"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		c.t.Fatalf("portcullisctl status -o json: %v\n%s", err, out)
	}
	return report.Attachments
}

// cgroupPrograms is what bpftool sees attached to a cgroup.
func cgroupPrograms(t *testing.T, cg cgroup.Cgroup) string {
	t.Helper()
	if !cg.Exists() {
		return ""
	}
	return strings.TrimSpace(testenv.Run(t, "bpftool", "cgroup", "show", cg.Path))
}

// mapEntries counts, with bpftool, the entries of every pinned hash map:
// the ones that hold per-container data (policies, port mappings, records,
// the services' registry...). Arrays (counters) and LRU caches are left
// out.
func (c *chain) mapEntries() map[string]int {
	c.t.Helper()
	counts := map[string]int{}
	paths, _ := filepath.Glob(filepath.Join(c.stateDir, "maps", "*"))
	for _, path := range paths {
		var info struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal([]byte(testenv.Run(c.t, "bpftool", "-j", "map", "show", "pinned", path)), &info); err != nil {
			c.t.Fatal(err)
		}
		if info.Type != "hash" {
			continue
		}
		out := testenv.Run(c.t, "bpftool", "-j", "map", "dump", "pinned", path)
		var entries []json.RawMessage
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			c.t.Fatalf("bpftool map dump %s: %v\n%s", path, err, out)
		}
		counts[filepath.Base(path)] = len(entries)
	}
	if _, ok := counts["policies"]; !ok {
		c.t.Fatalf("no policies map among %v", paths)
	}
	return counts
}

// totalEntries sums the map entries that belong to containers: the
// network's own declared services (the conf's "services") outlive every
// container and are not counted.
func (c *chain) totalEntries() (int, map[string]int) {
	counts := c.mapEntries()
	total := 0
	for m, n := range counts {
		total += max(0, n-c.networkEntries[m])
	}
	return total, counts
}

// linkFolders lists the per-attachment folders of pinned links.
func (c *chain) linkFolders() []string {
	entries, _ := os.ReadDir(filepath.Join(c.stateDir, "cgroups"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// requireGone checks that nothing of an attachment is left: no record, no
// link folder, no program on the cgroup, no map entry.
func (c *chain) requireGone(k *container) {
	c.t.Helper()
	for _, a := range c.attachments() {
		if a.ID == k.attachmentID() {
			c.t.Fatalf("attachment %s is still recorded: %+v", a.ID, a)
		}
	}
	if _, err := os.Stat(filepath.Join(c.stateDir, "cgroups", k.attachmentID())); !os.IsNotExist(err) {
		c.t.Fatalf("link folder of %s is still pinned (%v)", k.attachmentID(), err)
	}
	if progs := cgroupPrograms(c.t, k.cg); progs != "" {
		c.t.Fatalf("programs still attached to %s:\n%s", k.cg.Path, progs)
	}
}

// listen starts sockprobe as a server inside the container (its cgroup and
// network namespace) and returns its first line.
func (c *chain) listen(k *container, addr string) (*testenv.Proc, testenv.ProbeResult) {
	c.t.Helper()
	p := testenv.Start(c.t, k.cg, k.ns.Command(c.probe, "listen", "-addr", addr, "-name", k.id))
	return p, testenv.ParseProbe(c.t, p.Line(c.t, 5*time.Second))
}

// connect runs sockprobe as a client from the host namespace.
func (c *chain) connect(addr string) testenv.ProbeResult {
	c.t.Helper()
	out, _ := c.host.Command(c.probe, "connect", "-addr", addr).Output()
	return testenv.ParseProbe(c.t, strings.TrimSpace(string(out)))
}

// pluginRun runs the built plugin the way a runtime does, inside the host
// namespace: CNI_* variables, the conf on stdin. It returns stdout and the
// exit error.
func (c *chain) pluginRun(env map[string]string, stdin string) (string, error) {
	cmd := c.host.Command(c.plugin)
	cmd.Env = append(os.Environ(), "CNI_PATH="+refPluginDir)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil && stderr.Len() > 0 {
		err = fmt.Errorf("%w (stderr: %s)", err, stderr.String())
	}
	return stdout.String(), err
}

// pluginConf is a portcullis conf for running the binary by hand, with a
// prevResult that gives the container the address addr.
func (c *chain) pluginConf(k *container, addr, extra string) string {
	if extra != "" {
		extra = ", " + extra
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "portcullis", "stateDir": %q, "logFile": %q,
		"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": %q}],
		               "ips": [{"address": "%s/32", "interface": 0}]} %s}`,
		c.name, c.stateDir, c.logFile, k.ns.Path, addr, extra)
}

func cniEnv(command string, k *container) map[string]string {
	return map[string]string{"CNI_COMMAND": command, "CNI_CONTAINERID": k.id, "CNI_NETNS": k.ns.Path, "CNI_IFNAME": "eth0"}
}

// cniError decodes the spec's error JSON; the whole of stdout must be it,
// with a cniVersion the plugin speaks.
func cniError(t *testing.T, stdout string) *types.Error {
	t.Helper()
	var e struct {
		CNIVersion string `json:"cniVersion"`
		types.Error
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || dec.More() {
		t.Fatalf("stdout is not one CNI error object: %v\n%s", err, stdout)
	}
	if !slices.Contains(cni.VersionInfo.SupportedVersions(), e.CNIVersion) {
		t.Fatalf("error has cniVersion %q, not one the plugin speaks:\n%s", e.CNIVersion, stdout)
	}
	return &e.Error
}

// asCNIError returns the plugin error libcni hands back.
func asCNIError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not the plugin's CNI error", err, err)
	}
	return e
}
