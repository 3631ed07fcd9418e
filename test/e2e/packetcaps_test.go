package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestRuncPacketSockets: packet sockets pass no cgroup hook, so the OCI
// hook refuses a host-network container with addresses that keeps
// CAP_NET_RAW, before anything is attached; the policy's allowRawSockets
// lets it start; runc's default (no CAP_NET_RAW) starts, and its packet
// and raw sockets are refused.
func TestRuncPacketSockets(t *testing.T) {
	e := newRuncEnv(t)
	const addr = "127.14.9.1"
	withNetRaw := func(policy string) string {
		b := e.bundle(bundleOptions{
			args:        []string{"sleep", "100"},
			annotations: map[string]string{ocihook.AnnotationPolicy: policy},
		})
		var spec specs.Spec
		readJSON(t, filepath.Join(b, "config.json"), &spec)
		c := spec.Process.Capabilities
		c.Bounding = append(c.Bounding, "CAP_NET_RAW")
		c.Effective = append(c.Effective, "CAP_NET_RAW")
		c.Permitted = append(c.Permitted, "CAP_NET_RAW")
		writeJSON(t, filepath.Join(b, "config.json"), &spec)
		return b
	}

	bad := "pc-netraw-" + testenv.Suffix()
	_, err := e.create(bad, withNetRaw(runcPolicy(addr)))
	want := "portcullis-hook: container " + bad + ": it keeps CAP_NET_RAW (bounding, effective, permitted) in the host network namespace, where portcullis cannot refuse packet sockets: drop CAP_NET_RAW (runc/podman --cap-drop NET_RAW, or leave it out of process.capabilities) or set \"allowRawSockets\": true in the policy"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("runc create with CAP_NET_RAW: %v\nwant %q", err, want)
	}
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after the refused start: attachments %v, want none", attachmentIDs(got))
	}
	if links, _ := filepath.Glob(filepath.Join(e.stateDir, "cgroups", "*")); len(links) != 0 {
		t.Fatalf("after the refused start: link folders %v, want none", links)
	}

	// The policy's opt-out: the container starts, and its packet socket
	// is the kernel's to allow.
	allowed := "pc-netraw-ok-" + testenv.Suffix()
	c := e.start(allowed, withNetRaw(strings.Replace(runcPolicy(addr), "{", `{"allowRawSockets": true, `, 1)))
	out, _ := c.exec("sockprobe", "packet", "-addr", addr+":0")
	if r := testenv.ParseProbe(t, strings.TrimSpace(out)); !r.OK {
		t.Fatalf("packet socket with allowRawSockets and CAP_NET_RAW: %+v, want a socket", r)
	}
	c.stop(t)

	// runc's default capabilities: it starts, and both kinds are EPERM
	// (packet: no CAP_NET_RAW; raw: portcullis' sock_create as well).
	id := "pc-netraw-none-" + testenv.Suffix()
	c = e.start(id, e.bundle(bundleOptions{
		args:        []string{"sleep", "100"},
		annotations: map[string]string{ocihook.AnnotationPolicy: runcPolicy(addr)},
	}))
	if got := attachmentIDs(e.attachments()); len(got) != 1 || got[0] != id {
		t.Fatalf("attachments %v, want [%s]", got, id)
	}
	for _, kind := range []string{"packet", "raw"} {
		out, _ := c.exec("sockprobe", kind, "-addr", addr+":0")
		if r := testenv.ParseProbe(t, strings.TrimSpace(out)); r.OK || r.Errno != "EPERM" {
			t.Fatalf("%s socket in a runc container without CAP_NET_RAW: %+v, want EPERM", kind, r)
		}
	}
	c.stop(t)
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("after runc delete: attachments %v", attachmentIDs(got))
	}
}
