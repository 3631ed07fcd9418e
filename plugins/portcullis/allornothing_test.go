package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cni"
)

// The tests below make an ADD fail at each step after the state is opened
// and check that it leaves exactly what was there before: services,
// attachments, link folders, programs on the cgroup and map entries.

// services19 is a conf's services key with two new services.
const services19 = `"services": [{"name": "web19", "frontends": ["10.19.0.10:80"], "backends": ["10.19.0.250:8019"]},
	{"name": "dns19", "frontends": ["10.19.0.11:53/udp"]}]`

// serviceNames lists the services in the state, each with its frontends.
func (c *chain) serviceNames() []string {
	c.t.Helper()
	out, err := exec.Command(c.ctl, "service", "list", "-o", "json", "--state-dir", c.stateDir).Output()
	if err != nil {
		c.t.Fatalf("portcullisctl service list: %v", err)
	}
	var list []struct {
		Name      string   `json:"name"`
		Frontends []string `json:"frontends"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		c.t.Fatalf("service list: %v\n%s", err, out)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name+"="+strings.Join(s.Frontends, ","))
	}
	return names
}

// snapshot is what an ADD must leave unchanged when it fails.
type snapshot struct {
	services, attachments, folders []string
	entries                        map[string]int
}

func (c *chain) snapshot() snapshot {
	var ids []string
	for _, a := range c.attachments() {
		ids = append(ids, fmt.Sprintf("%s:%d:%s", a.ID, a.CgroupID, policyJSONOf(a.Policy)))
	}
	return snapshot{services: c.serviceNames(), attachments: ids, folders: c.linkFolders(), entries: c.mapEntries()}
}

func policyJSONOf(p any) string {
	data, _ := json.Marshal(p)
	return string(data)
}

func (c *chain) requireUnchanged(before snapshot) {
	c.t.Helper()
	after := c.snapshot()
	if !slices.Equal(before.services, after.services) {
		c.t.Errorf("services %v, before the failed ADD %v", after.services, before.services)
	}
	if !slices.Equal(before.attachments, after.attachments) {
		c.t.Errorf("attachments %v, before the failed ADD %v", after.attachments, before.attachments)
	}
	if !slices.Equal(before.folders, after.folders) {
		c.t.Errorf("link folders %v, before the failed ADD %v", after.folders, before.folders)
	}
	if fmt.Sprint(before.entries) != fmt.Sprint(after.entries) {
		c.t.Errorf("map entries %v, before the failed ADD %v", after.entries, before.entries)
	}
}

// failAdd runs ADD and wants it to fail with code and a message containing
// want.
func (c *chain) failAdd(k *container, env map[string]string, conf string, code uint, want string) {
	c.t.Helper()
	all := cniEnv("ADD", k)
	for name, v := range env {
		all[name] = v
	}
	stdout, err := c.pluginRun(all, conf)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		c.t.Fatalf("ADD exited with %v, want a failure; stdout %s", err, stdout)
	}
	if e := cniError(c.t, stdout); e.Code != code || !strings.Contains(e.Msg, want) {
		c.t.Fatalf("ADD failed with code %d %q, want code %d containing %q", e.Code, e.Msg, code, want)
	}
}

// chainWithContainer19 is a network and a container with a process and
// the address 10.19.0.2.
func chainWithContainer19(t *testing.T) (*chain, *container) {
	c := newChain(t, "")
	k := c.container(true)
	k.ns.IP(t, "addr", "add", "10.19.0.2/32", "dev", "lo")
	return c, k
}

func (c *chain) load() {
	c.t.Helper()
	if out, err := exec.Command(c.ctl, "load", "--state-dir", c.stateDir).CombinedOutput(); err != nil {
		c.t.Fatalf("portcullisctl load: %v\n%s", err, out)
	}
}

// TestFailedAddAppliesNoServices is the case: the conf's services
// are valid, but prevResult gives an address the namespace does not have.
func TestFailedAddAppliesNoServices(t *testing.T) {
	c, k := chainWithContainer19(t)
	c.load()
	before := c.snapshot()
	c.failAdd(k, nil, c.pluginConf(k, "10.19.0.3", services19), cni.ErrAttachFailed, "address 10.19.0.3 is not configured in network namespace")
	c.requireUnchanged(before)
	if progs := cgroupPrograms(t, k.cg); progs != "" {
		t.Fatalf("programs on the cgroup after a failed ADD:\n%s", progs)
	}
	// The same conf with the right address applies them.
	if out, err := c.pluginRun(cniEnv("ADD", k), c.pluginConf(k, "10.19.0.2", services19)); err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	if got := c.serviceNames(); !slices.Equal(got, []string{"dns19=10.19.0.11:53/udp", "web19=10.19.0.10:80/tcp"}) {
		t.Fatalf("services after a good ADD: %v", got)
	}
}

// TestFailedAttachUndoesServices: the services are applied, then the
// attach fails (another container already holds the network namespace).
func TestFailedAttachUndoesServices(t *testing.T) {
	c, k := chainWithContainer19(t)
	squatter := cniEnv("ADD", k)
	squatter["CNI_CONTAINERID"] = "squat19"
	if out, err := c.pluginRun(squatter, c.pluginConf(k, "10.19.0.2", "")); err != nil {
		t.Fatalf("ADD squat19: %v\n%s", err, out)
	}
	// One of the services exists already, with other frontends: it gets
	// them back.
	if out, err := exec.Command(c.ctl, "service", "add", "web19", "--frontend", "10.19.0.12:80", "--state-dir", c.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("service add: %v\n%s", err, out)
	}
	before := c.snapshot()
	c.failAdd(k, nil, c.pluginConf(k, "10.19.0.2", services19), cni.ErrAttachFailed, `is already attached as "squat19-eth0"`)
	c.requireUnchanged(before)
}

// TestFailedServicesUndoThemselves: the second service's frontend belongs
// to another service, so Apply fails after putting the first.
func TestFailedServicesUndoThemselves(t *testing.T) {
	c, k := chainWithContainer19(t)
	c.load()
	if out, err := exec.Command(c.ctl, "service", "add", "other19", "--frontend", "10.19.0.11:53/udp", "--state-dir", c.stateDir).CombinedOutput(); err != nil {
		t.Fatalf("service add: %v\n%s", err, out)
	}
	before := c.snapshot()
	c.failAdd(k, nil, c.pluginConf(k, "10.19.0.2", services19), cni.ErrAttachFailed, "services: ")
	c.requireUnchanged(before)
}

// TestFailedReplaceKeepsTheOldAttachment: a repeated ADD detaches the old
// attachment to replace it; when a later step fails (here: the result
// cannot be written), the old one is back with its policy.
func TestFailedReplaceKeepsTheOldAttachment(t *testing.T) {
	c, k := chainWithContainer19(t)
	if out, err := c.pluginRun(cniEnv("ADD", k), c.pluginConf(k, "10.19.0.2", `"policy": {"allowedPorts": ["19001"]}`)); err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	before := c.snapshot()
	c.addWithClosedStdout(k, c.pluginConf(k, "10.19.0.2", services19+`, "policy": {"allowedPorts": ["19002"]}`))
	c.requireUnchanged(before)
	if _, r := c.listen(k, "0.0.0.0:19001"); !r.OK {
		t.Fatalf("the old policy's port 19001 is refused after the failed replace: %+v", r)
	}
}

// addWithClosedStdout runs ADD with a stdout nobody reads and wants it to
// fail with exit status 1, not be killed by SIGPIPE half way.
func (c *chain) addWithClosedStdout(k *container, conf string) {
	c.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		c.t.Fatal(err)
	}
	r.Close()
	cmd := c.host.Command(c.plugin)
	cmd.Env = append(os.Environ(), "CNI_PATH="+refPluginDir)
	for name, v := range cniEnv("ADD", k) {
		cmd.Env = append(cmd.Env, name+"="+v)
	}
	cmd.Stdin = strings.NewReader(conf)
	cmd.Stdout = w
	err = cmd.Run()
	w.Close()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		c.t.Fatalf("ADD with a closed stdout: %v, want exit status 1 (not a signal)", err)
	}
	if log, _ := os.ReadFile(c.logFile); !strings.Contains(string(log), "write result: ") {
		c.t.Fatalf("log does not say the result could not be written:\n%s", log)
	}
}

// TestFailedServicesDirUndoesAll: the attach reads services.d after its
// links are pinned; a FIFO there fails it, and the conf's services go too.
func TestFailedServicesDirUndoesAll(t *testing.T) {
	c, k := chainWithContainer19(t)
	c.load()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.json")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	before := c.snapshot()
	c.failAdd(k, map[string]string{"PORTCULLIS_SERVICES_DIR": dir}, c.pluginConf(k, "10.19.0.2", services19), cni.ErrAttachFailed,
		"services.d: "+fifo+" is a FIFO: portcullis reads only regular files")
	c.requireUnchanged(before)
	if progs := cgroupPrograms(t, k.cg); progs != "" {
		t.Fatalf("programs on the cgroup after a failed ADD:\n%s", progs)
	}
}

// TestAddWithClosedStdoutUndoesAll: the runtime stopped reading, so the
// result cannot be written. The plugin is not killed by SIGPIPE half way:
// it undoes the attachment and the services, and fails.
func TestAddWithClosedStdoutUndoesAll(t *testing.T) {
	c, k := chainWithContainer19(t)
	c.load()
	before := c.snapshot()
	c.addWithClosedStdout(k, c.pluginConf(k, "10.19.0.2", services19))
	c.requireUnchanged(before)
	if progs := cgroupPrograms(t, k.cg); progs != "" {
		t.Fatalf("programs on the cgroup after a failed ADD:\n%s", progs)
	}
}
