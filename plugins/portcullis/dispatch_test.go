package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/dispatch"
)

// TestDispatchFollowsAddAndDel: a conf policy's dispatch bindings are
// installed in the container's namespace at ADD, owned by its attachment,
// serve the socket registered from the container, and go at DEL.
func TestDispatchFollowsAddAndDel(t *testing.T) {
	c := newChain(t, `"policy": {"dispatch": [{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/24", "ports": "16080"}]}`)
	k := c.container(true)
	c.mustAdd(k)
	a := c.attachments()[0]
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(c.ctl, append([]string{"dispatch", "--state-dir", c.stateDir, "--netns", k.ns.Path}, args...)...).CombinedOutput()
		return string(out), err
	}
	list := func() []dispatch.Destination {
		out, err := ctl("list", "-o", "json")
		var l dispatch.Listing
		if err != nil || json.Unmarshal([]byte(out), &l) != nil {
			t.Fatalf("dispatch list: %v %s", err, out)
		}
		return l.Destinations
	}
	if d := list(); len(d) != 1 || d[0].Label != "web" || d[0].Owner != a.ID || len(d[0].Bindings) != 1 || d[0].Bindings[0].Ports != "16080" {
		t.Fatalf("after ADD: %+v", d)
	}
	srv, r := c.listen(k, "127.0.0.1:16081")
	if !r.OK {
		t.Fatalf("listen in the container: %+v", r)
	}
	if out, err := ctl("register", "web", "--pid", fmt.Sprint(srv.Cmd.Process.Pid)); err != nil {
		t.Fatalf("register: %v %s", err, out)
	}
	dial := func() string {
		out, _ := k.ns.Command(c.probe, "connect", "-addr", "127.0.7.5:16080").Output()
		return strings.TrimSpace(string(out))
	}
	if got := dial(); !strings.Contains(got, `"reply":"`+k.id+`"`) || !strings.Contains(got, `"peer":"127.0.7.5:16080"`) {
		t.Fatalf("dial 127.0.7.5:16080 in the container's namespace: %s", got)
	}
	if err := c.del(k); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if d := list(); len(d) != 0 {
		t.Fatalf("after DEL: %+v", d)
	}
	if got := dial(); !strings.Contains(got, "ECONNREFUSED") {
		t.Fatalf("dial after DEL: %s, want ECONNREFUSED", got)
	}
}
