package state_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// expectNothingAttached checks the state, the pinned folders and the
// kernel's view of the cgroup.
func expectNothingAttached(t *testing.T, dir, cgroupPath string) {
	t.Helper()
	s, err := state.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if list, _ := s.Attachments(); len(list) != 0 {
		t.Errorf("attachments left: %+v", list)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "cgroups")); len(entries) != 0 {
		t.Errorf("pinned link folders left: %v", entries)
	}
	for _, m := range []string{"policies", "portmaps"} {
		out := testenv.Run(t, "bpftool", "map", "dump", "pinned", filepath.Join(dir, "maps", m))
		if !strings.Contains(out, "Found 0 elements") && strings.TrimSpace(out) != "[]" {
			t.Errorf("map %s not empty:\n%s", m, out)
		}
	}
	if cgroupPath != "" {
		if out := testenv.Run(t, "bpftool", "cgroup", "show", cgroupPath); strings.TrimSpace(out) != "" {
			t.Errorf("programs left on %s:\n%s", cgroupPath, out)
		}
	}
}

func TestAttachBadInputLeavesNothing(t *testing.T) {
	dir := testenv.StateDir(t)
	ns := testenv.NewNetNS(t)
	cg := testenv.Cgroup(t, "bad")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mapped := &policy.Policy{PortMappings: []policy.PortMapping{{ContainerPort: 80, HostPort: 8080, Protocol: policy.TCP}}}
	for _, tc := range []struct {
		name string
		req  state.AttachRequest
		want string
	}{
		{"missing cgroup", state.AttachRequest{ID: "a", Cgroup: cg.Path + "-gone", Policy: mapped}, "does not exist"},
		{"not a cgroup", state.AttachRequest{ID: "a", Cgroup: "/tmp", Policy: mapped}, "not a cgroup v2 directory"},
		{"address not on the host", state.AttachRequest{ID: "a", Cgroup: cg.Path, NetNS: ns.Path,
			Policy: mustParse(t, `{"addresses": ["10.77.0.1"], "portMappings": [{"containerPort": 80, "hostPort": 8080}]}`)},
			"address 10.77.0.1 is not configured in network namespace"},
		{"v6 address not on the host", state.AttachRequest{ID: "a", Cgroup: cg.Path, NetNS: ns.Path,
			Policy: mustParse(t, `{"addresses": ["fd99::1"]}`)}, "address fd99::1 is not configured"},
		{"id with a dot", state.AttachRequest{ID: "a.b", Cgroup: cg.Path, Policy: mapped}, "bpffs refuses dots"},
		{"empty id", state.AttachRequest{ID: "", Cgroup: cg.Path, Policy: mapped}, "must be 1-127 characters"},
		{"id too long", state.AttachRequest{ID: strings.Repeat("x", 128), Cgroup: cg.Path, Policy: mapped}, "must be 1-127 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Attach(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Attach: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	s.Close()
	expectNothingAttached(t, dir, cg.Path)
}

func TestAttachTwiceIsRefused(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "twice")
	other := testenv.Cgroup(t, "other")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "one", Cgroup: cg.Path}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(state.AttachRequest{ID: "one", Cgroup: other.Path}); err == nil || !strings.Contains(err.Error(), `attachment "one" already exists`) {
		t.Errorf("same id: %v", err)
	}
	if _, err := s.Attach(state.AttachRequest{ID: "two", Cgroup: cg.Path}); err == nil || !strings.Contains(err.Error(), `is already attached as "one"`) {
		t.Errorf("same cgroup: %v", err)
	}
	if err := s.Detach("nope"); err == nil || !strings.Contains(err.Error(), "no such attachment") {
		t.Errorf("unknown id: %v", err)
	}
	if err := s.Detach("one"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	expectNothingAttached(t, dir, cg.Path)
}

func TestAttachmentOutlivesItsProcessAndCgroupRemoval(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "gone")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(state.AttachRequest{ID: "gone", Cgroup: cg.Path, Policy: &policy.Policy{}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Another process (here: a new open) sees the attachment and its links.
	s, err = state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Get("gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyLinks(a); err != nil {
		t.Fatalf("links after reopen: %v", err)
	}
	testenv.RemoveCgroup(t, cg.Path)
	if err := s.VerifyLinks(a); err == nil {
		t.Fatal("VerifyLinks passes for a removed cgroup")
	}
	if err := s.Detach("gone"); err != nil {
		t.Fatalf("detach after the cgroup is gone: %v", err)
	}
}

func mustParse(t *testing.T, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
