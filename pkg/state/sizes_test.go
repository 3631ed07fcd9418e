package state_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// The map sizes given at load are the kernel's max_entries, a full map is
// a clear error that leaves nothing behind, and the reported memory grows
// with the attachments, not with the caps.
func TestSizesAtLoad(t *testing.T) {
	dir := testenv.StateDir(t)
	if _, err := state.LoadSized(dir, state.Sizes{Peers: 5}); err == nil || !strings.Contains(err.Error(), "max-peers 5: must be between") {
		t.Fatalf("peers 5: %v", err)
	}
	if _, err := state.LoadSized(dir, state.Sizes{Containers: 1024, Peers: 2048}); err != nil {
		t.Fatal(err)
	}
	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	usage := func() map[string]state.MapUsage {
		t.Helper()
		list, err := s.MapMemory()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]state.MapUsage{}
		for _, m := range list {
			out[m.Name] = m
		}
		return out
	}
	before := usage()
	for name, want := range map[string]uint32{"policies": 1024, "attachments": 1024, "attachment_keys": 1024, "svc_peers": 2048, "svc_udp_peers": 2048, "svc_backends": 131072} {
		if got := before[name].MaxEntries; got != want {
			t.Errorf("map %s: max entries %d, want %d", name, got, want)
		}
	}

	// Fill the records map: the next attach fails naming the map.
	parent := testenv.Cgroup(t, "sizes")
	testenv.AttachMany(t, s, parent, "full", 1024, &policy.Policy{})
	after := usage()
	// Each record costs its 512-byte head (and the kernel's element
	// overhead), allocated when attached.
	if grew := after["attachments"].Memlock - before["attachments"].Memlock; grew < 1024*512 || grew > 1024*1024 {
		t.Errorf("records grew by %d bytes for 1024 attachments, want 0.5 to 1 MiB", grew)
	}
	extra := testenv.ChildCgroup(t, parent, "extra")
	_, err = s.Attach(state.AttachRequest{ID: "extra", Cgroup: extra.Path})
	if err == nil || !strings.Contains(err.Error(), "is full (1024 entries)") {
		t.Fatalf("attach 1025 of 1024: %v", err)
	}
	if got, _ := s.AttachmentOfCgroup(extra.ID); got != "" {
		t.Errorf("failed attach left index entry %q", got)
	}
	for i := 0; i < 1024; i++ {
		if err := s.Detach(fmt.Sprintf("full-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
}
