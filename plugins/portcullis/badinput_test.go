package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/portcullis-net/portcullis/pkg/cni"
)

// TestBadInput runs the built binary as a runtime would, with each kind of
// bad input: it must exit non-zero with exactly the spec's error JSON on
// stdout (a code and a message that says what to fix), log the error, and
// leave nothing pinned or attached.
func TestBadInput(t *testing.T) {
	c := newChain(t, "")
	withProc := c.container(true)
	noProc := c.container(false)
	withProc.ns.IP(t, "addr", "add", "10.97.0.2/32", "dev", "lo")
	good := c.pluginConf(withProc, "10.97.0.2", "")

	for _, tc := range []struct {
		name  string
		k     *container
		env   map[string]string
		stdin string
		code  uint
		want  string
		// loads is set when the failure comes after the state is
		// loaded; it must still hold no attachment.
		loads bool
		// logged is unset when skel refuses the input before the
		// plugin's code runs (it cannot know the logFile).
		unlogged bool
	}{
		{name: "missing prevResult", k: withProc,
			stdin: fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "type": "portcullis", "stateDir": %q, "logFile": %q}`, c.name, c.stateDir, c.logFile),
			code:  types.ErrInvalidNetworkConfig, want: "no prevResult: portcullis is a chained plugin; list it after the main plugin"},
		{name: "malformed conf", k: withProc, stdin: `{"cniVersion": "1.0.0", "name": "x", "type": `,
			code: types.ErrDecodingFailure, want: "error unmarshall network config", unlogged: true},
		{name: "unknown policy name", k: withProc, env: map[string]string{"CNI_ARGS": "IgnoreUnknown=1;PORTCULLIS_POLICY=nope"},
			stdin: c.pluginConf(withProc, "10.97.0.2", `"policies": {"web": {}}`),
			code:  types.ErrInvalidNetworkConfig, want: `CNI_ARGS PORTCULLIS_POLICY=nope: the conf has no such policy under "policies" (it has: web)`},
		{name: "unknown field", k: withProc, stdin: c.pluginConf(withProc, "10.97.0.2", `"polcy": {"allowedPorts": ["80"]}`),
			code: types.ErrUnsupportedField, want: `unknown field "polcy" (value {"allowedPorts":["80"]}) in the portcullis conf: remove it or fix its spelling`},
		{name: "unknown policy field", k: withProc, stdin: c.pluginConf(withProc, "10.97.0.2", `"policy": {"allowedPort": ["80"]}`),
			code: types.ErrInvalidNetworkConfig, want: `policy: invalid policy: unknown field "allowedPort"`},
		{name: "invalid policy", k: withProc, stdin: c.pluginConf(withProc, "10.97.0.2", `"policy": {"allowedPorts": ["0"]}`),
			code: types.ErrInvalidNetworkConfig, want: `policy: invalid policy: allowedPorts[0]: port range "0": "0" is not a port (1-65535)`},
		{name: "CNI_NETNS does not exist", k: noProc, env: map[string]string{"CNI_NETNS": "/run/netns/portcullis-test-nonexistent"},
			stdin: c.pluginConf(noProc, "10.97.0.2", ""),
			code:  types.ErrInvalidNetNS, want: "CNI_NETNS: network namespace /run/netns/portcullis-test-nonexistent: "},
		{name: "no CNI_NETNS", k: withProc, env: map[string]string{"CNI_NETNS": ""}, stdin: good,
			code: types.ErrInvalidEnvironmentVariables, want: "required env variables [CNI_NETNS] missing", unlogged: true},
		{name: "CNI_NETNS is the plugin's own", k: withProc, env: map[string]string{"CNI_NETNS": c.host.Path}, stdin: good,
			code: types.ErrInvalidNetNS, want: "CNI_NETNS " + c.host.Path + " is the plugin's own network namespace"},
		// Checked before the state is opened, so it does not load it.
		{name: "address not in the container", k: withProc, stdin: c.pluginConf(withProc, "10.97.0.3", ""),
			code: cni.ErrAttachFailed, want: "address 10.97.0.3 is not configured in network namespace " + withProc.ns.Path},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(c.logFile)
			env := cniEnv("ADD", tc.k)
			for k, v := range tc.env {
				env[k] = v
			}
			stdout, err := c.pluginRun(env, tc.stdin)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("plugin exited with %v, want a non-zero status; stdout %s", err, stdout)
			}
			e := cniError(t, stdout)
			if e.Code != tc.code || !strings.HasPrefix(e.Msg, tc.want) {
				t.Fatalf("error code %d %q\nwant code %d starting %q", e.Code, e.Msg, tc.code, tc.want)
			}
			log, _ := os.ReadFile(c.logFile)
			if !tc.unlogged && !strings.Contains(string(log), fmt.Sprintf("code %d: %s", e.Code, e.Msg)) {
				t.Errorf("log file does not have the error:\n%s", log)
			}
			if progs := cgroupPrograms(t, tc.k.cg); progs != "" {
				t.Fatalf("programs attached to %s after a failed ADD:\n%s", tc.k.cg.Path, progs)
			}
			if !tc.loads {
				if _, err := os.Stat(c.stateDir); !os.IsNotExist(err) {
					t.Fatalf("a failed ADD left state in %s (%v)", c.stateDir, err)
				}
				return
			}
			if list := c.attachments(); len(list) != 0 {
				t.Fatalf("attachments after a failed ADD: %+v", list)
			}
			if folders := c.linkFolders(); len(folders) != 0 {
				t.Fatalf("link folders after a failed ADD: %v", folders)
			}
			if links, _ := filepath.Glob(filepath.Join(c.stateDir, "netns", "links", "*")); len(links) != 0 {
				t.Fatalf("namespace links after a failed ADD: %v", links)
			}
			if total, n := c.totalEntries(); total != 0 {
				t.Fatalf("map entries after a failed ADD: %v", n)
			}
		})
	}
}

// TestConcurrentAdds starts many containers at once, as a runtime does at
// boot: every ADD and then every DEL succeeds, on a state that none of them
// found loaded, and each container ends up with exactly its own policy.
func TestConcurrentAdds(t *testing.T) {
	c := newChain(t, "")
	const n = 8
	var ks []*container
	for i := 0; i < n; i++ {
		k := c.container(true)
		k.ns.IP(t, "addr", "add", fmt.Sprintf("10.98.0.%d/32", i+1), "dev", "lo")
		ks = append(ks, k)
	}
	run := func(command string) {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, k := range ks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conf := c.pluginConf(k, fmt.Sprintf("10.98.0.%d", i+1), `"policy": {"allowedPorts": ["`+fmt.Sprint(20000+i)+`"]}`)
				if out, err := c.pluginRun(cniEnv(command, k), conf); err != nil {
					errs[i] = fmt.Errorf("%s %s: %v\n%s", command, k.id, err, out)
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	run("ADD")
	list := c.attachments()
	if len(list) != n {
		t.Fatalf("%d attachments after %d concurrent ADDs", len(list), n)
	}
	for i, k := range ks {
		var found bool
		for _, a := range list {
			if a.ID == k.attachmentID() {
				found = a.CgroupID == k.key(t) && a.Policy.Addresses[0].String() == fmt.Sprintf("10.98.0.%d", i+1) &&
					a.Policy.AllowedPorts[0].First == uint16(20000+i)
			}
		}
		if !found {
			t.Fatalf("container %d (%s): no attachment with its namespace, address and port in %+v", i, k.id, list)
		}
	}
	run("DEL")
	for _, k := range ks {
		c.requireGone(k)
	}
	if total, n := c.totalEntries(); total != 0 {
		t.Fatalf("map entries after the DELs: %v", n)
	}
}
