package state_test

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// randomRules are egress rules that compress badly: random /24 prefixes.
func randomRules(n int, seed int64) string {
	r := rand.New(rand.NewSource(seed))
	var rules []string
	for i := 0; i < n; i++ {
		rules = append(rules, fmt.Sprintf(`{"action": %q, "cidr": "%d.%d.%d.0/24", "ports": ["%d"]}`,
			[]string{"allow", "deny"}[r.Intn(2)], 1+r.Intn(223), r.Intn(256), r.Intn(256), 1+r.Intn(65535)))
	}
	return `{"egress": [` + strings.Join(rules, ", ") + `]}`
}

// A policy whose record does not fit the kernel's record, even gzipped,
// is kept whole in chunks: read back as written, replaced by a short one
// without leftovers, and gone at detach.
func TestLongRecords(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "long")
	doc := randomRules(3000, 13)
	a := testenv.Attach(t, dir, "long", cg.Path, doc, "")
	want, _ := json.Marshal(a.Policy)

	s, err := state.Open(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Get("long")
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := json.Marshal(got.Policy); string(data) != string(want) {
		t.Fatalf("Get changed the policy: %d bytes, want %d", len(data), len(want))
	}
	if list, err := s.Attachments(); err != nil || len(list) != 1 || len(list[0].Policy.Egress) != 3000 {
		t.Fatalf("Attachments: %v, %d", err, len(list))
	}
	chunks := func() int {
		out, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", filepath.Join(dir, "maps", "record_chunks")).Output()
		if err != nil {
			t.Fatalf("bpftool map dump record_chunks: %v", err)
		}
		var entries []json.RawMessage
		json.Unmarshal(out, &entries)
		return len(entries)
	}
	if n := chunks(); n < 2 {
		t.Fatalf("%d chunks for a %d-byte policy", n, len(want))
	}
	short, _ := policy.Parse([]byte(`{"egress": [{"action": "deny", "cidr": "10.13.0.0/16"}]}`))
	if _, err := s.SetPolicy("long", short); err != nil {
		t.Fatal(err)
	}
	if n := chunks(); n != 0 {
		t.Fatalf("%d chunks left after a short policy replaced the long one", n)
	}
	if _, err := s.SetPolicy("long", &a.Policy); err != nil {
		t.Fatal(err)
	}
	if err := s.Detach("long"); err != nil {
		t.Fatal(err)
	}
	if n := chunks(); n != 0 {
		t.Fatalf("%d chunks left after detach", n)
	}

	// Beyond 64 KiB compressed the attach is refused, naming the cause,
	// and leaves nothing behind.
	r := rand.New(rand.NewSource(15))
	var rules []string
	for i := 0; i < policy.MaxEgressRules; i++ {
		var ports []string
		for j := 0; j < policy.MaxRulePorts; j++ {
			ports = append(ports, fmt.Sprintf("%q", fmt.Sprint(1+r.Intn(65535))))
		}
		rules = append(rules, fmt.Sprintf(`{"action": "deny", "cidr": "%d.%d.%d.0/24", "ports": [%s]}`, 1+r.Intn(223), r.Intn(256), r.Intn(256), strings.Join(ports, ",")))
	}
	huge, err := policy.Parse([]byte(`{"egress": [` + strings.Join(rules, ",") + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach(state.AttachRequest{ID: "huge", Cgroup: cg.Path, Policy: huge}); err == nil || !strings.Contains(err.Error(), "policy too large") {
		t.Fatalf("a %d-rule policy of random ports: %v, want policy too large", len(rules), err)
	}
	if list, _ := s.Attachments(); len(list) != 0 || chunks() != 0 {
		t.Fatalf("a refused attach left %d attachments, %d chunks", len(list), chunks())
	}
}
