package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cni"
	"github.com/portcullis-net/portcullis/test/guardtest"
)

// The network's policy caps connections; named policies label containers
// prod or nonprod and keep prod away from nonprod (seed 003's two cases).
const guardKeys = `"policy": {"connectionLimits": {"perDestination": 2}},
	"policies": {
		"prod":    {"groups": ["prod"], "egress": [{"action": "deny", "group": "nonprod"}]},
		"nonprod": {"groups": ["nonprod"]}}`

// TestConnectionCapsAndEgressThroughCNI runs the caps and the egress rules
// through ADD and DEL of the real chain: the container addresses the
// bridge gives are the group members.
func TestConnectionCapsAndEgressThroughCNI(t *testing.T) {
	c := newChain(t, guardKeys)
	named := func(policy string) (*container, string) {
		k := c.container(true)
		k.rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {cni.ArgPolicy, policy}}
		return k, c.mustAdd(k)
	}
	nonprod, nonprodIP := named("nonprod")
	other, otherIP := named("prod")
	prod, prodIP := named("prod")
	for _, k := range []*container{nonprod, other} {
		if _, r := c.listen(k, "0.0.0.0:13020"); !r.OK {
			t.Fatalf("listen in %s: %+v", k.id, r)
		}
	}

	p := guardtest.Start(t, prod.cg, prod.ns.Command)
	p.Connect(t, "tcp", nonprodIP+":13020", "EPERM")
	p.SendTo(t, nonprodIP+":13020", "EPERM")
	first := p.Connect(t, "tcp", otherIP+":13020", "")
	p.Connect(t, "tcp", otherIP+":13020", "")
	p.Connect(t, "tcp", otherIP+":13020", "EAGAIN")
	p.Close(t, first)
	p.Connect(t, "tcp", otherIP+":13020", "")

	// status shows the counts of the prod container.
	out, err := exec.Command(c.ctl, "status", "--state-dir", c.stateDir, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var report struct {
		Connections map[string]struct {
			Live uint64 `json:"live"`
		} `json:"connections"`
	}
	json.Unmarshal(out, &report)
	if got := report.Connections[prod.attachmentID()].Live; got != 2 {
		t.Errorf("status: prod holds %d connections, want 2\n%s", got, out)
	}

	// ADD again (the portcullis plugin alone: the bridge refuses a second
	// veth) with another named policy replaces the policy in place: the
	// connections made carry on, the new rules apply at once.
	env := cniEnv("ADD", prod)
	env["CNI_ARGS"] = "IgnoreUnknown=1;" + cni.ArgPolicy + "=nonprod"
	if out, err := c.pluginRun(env, c.pluginConf(prod, prodIP, guardKeys)); err != nil {
		t.Fatalf("repeated ADD: %v\n%s", err, out)
	}
	if list := c.attachments(); len(list) != 3 {
		t.Fatalf("attachments after the repeated ADD: %+v", list)
	}
	p.Connect(t, "tcp", nonprodIP+":13020", "") // no rule against nonprod now
	p.Alive(t, first+1)
	if log, _ := os.ReadFile(c.logFile); !strings.Contains(string(log), "replaced the policy of "+prod.attachmentID()+" in place") {
		t.Errorf("plugin log does not say the policy was replaced in place")
	}

	// DEL leaves nothing behind in any map, group bookkeeping included.
	for _, k := range []*container{prod, other, nonprod} {
		if err := c.del(k); err != nil {
			t.Fatalf("DEL %s: %v", k.id, err)
		}
		c.requireGone(k)
	}
	if total, counts := c.totalEntries(); total != 0 {
		t.Fatalf("map entries left after DEL: %v", counts)
	}
}
