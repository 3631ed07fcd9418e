package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// AttachMany creates n cgroups below parent and attaches p to each
// through s, as ids prefix-0 ... prefix-(n-1). The parent's cleanup
// removes the cgroups; detaching is the caller's.
func AttachMany(t testing.TB, s *state.State, parent cgroup.Cgroup, prefix string, n int, p *policy.Policy) []cgroup.Cgroup {
	t.Helper()
	cgs := make([]cgroup.Cgroup, n)
	for i := range cgs {
		path := filepath.Join(parent.Path, fmt.Sprintf("%s-%d", prefix, i))
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatalf("create cgroup %d of %d: %v", i, n, err)
		}
		a, err := s.Attach(state.AttachRequest{ID: fmt.Sprintf("%s-%d", prefix, i), Cgroup: path, Policy: p})
		if err != nil {
			t.Fatalf("attach %d of %d: %v", i, n, err)
		}
		cgs[i] = a.Cgroup()
	}
	return cgs
}
