package packetcaps

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

func TestCheckSpec(t *testing.T) {
	withAddr := &policy.Policy{Addresses: []netip.Addr{netip.MustParseAddr("127.0.9.3")}}
	allowRaw := &policy.Policy{Addresses: withAddr.Addresses, AllowRawSockets: true}
	noAddr := &policy.Policy{}
	caps := func(sets ...[]string) *specs.Spec {
		s := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
		c := s.Process.Capabilities
		c.Bounding, c.Effective, c.Permitted = sets[0], sets[1], sets[2]
		return s
	}
	runcDefault := caps([]string{"CAP_KILL"}, []string{"CAP_KILL"}, []string{"CAP_KILL"})
	raw := caps([]string{"CAP_KILL", "CAP_NET_RAW"}, []string{"CAP_KILL"}, []string{"CAP_NET_RAW"})
	userns := caps([]string{"CAP_NET_RAW"}, nil, nil)
	userns.Linux = &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UserNamespace}}}
	for _, c := range []struct {
		name string
		p    *policy.Policy
		spec *specs.Spec
		host bool
		want string // "" for no error
	}{
		{"runc default", withAddr, runcDefault, true, ""},
		{"CAP_NET_RAW", withAddr, raw, true, "it keeps CAP_NET_RAW (bounding, permitted) in the host network namespace"},
		{"no capabilities object", withAddr, &specs.Spec{Process: &specs.Process{}}, true, "CAP_NET_RAW (all (config.json sets no capabilities))"},
		{"allowRawSockets", allowRaw, raw, true, ""},
		{"no addresses", noAddr, raw, true, ""},
		{"own network namespace", withAddr, raw, false, ""},
		{"own user namespace", withAddr, userns, true, ""},
	} {
		err := CheckSpec(c.p, c.spec, c.host)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want no error", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--cap-drop NET_RAW") ||
			!strings.Contains(err.Error(), `"allowRawSockets": true`) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q and both fixes", c.name, err, c.want)
		}
	}
}

// capBnd reads root's bounding set (with CAP_NET_RAW); the warning lists a
// few processes on one line. (cmd/portcullisctl tests RawCapable on real
// cgroups.)
func TestRawCapable(t *testing.T) {
	if bnd, ok := capBnd(os.Getpid()); !ok || bnd&(1<<capNetRaw) == 0 {
		t.Fatalf("CapBnd of the test %x (%v): run it as root", bnd, ok)
	}
	if _, err := RawCapable("/nonexistent-cgroup"); err == nil {
		t.Error("RawCapable of a missing cgroup: no error")
	}
	w := Warning("/sys/fs/cgroup/x", []int{1, 2, 3, 4, 5, 6, 7})
	if !strings.Contains(w, "process 1, 2, 3, 4, 5, and 2 more of cgroup /sys/fs/cgroup/x keeps CAP_NET_RAW") || strings.Contains(w, "\n") {
		t.Errorf("warning %q", w)
	}
	if Warning("x", nil) != "" {
		t.Error("warning without processes")
	}
}
