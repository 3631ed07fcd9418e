package state_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestConcurrentFirstAttaches starts many attaches at once against a state
// that is not loaded yet, as a runtime starting many containers does: one
// of them loads, all of them attach, none sees a half-built state.
func TestConcurrentFirstAttaches(t *testing.T) {
	dir := testenv.StateDir(t)
	const n = 8
	cgs := make([]cgroup.Cgroup, n)
	for i := range cgs {
		cgs[i] = testenv.Cgroup(t, fmt.Sprintf("par%d", i))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := state.OpenOrLoad(dir)
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			_, errs[i] = s.Attach(state.AttachRequest{ID: fmt.Sprintf("c%d", i), Cgroup: cgs[i].Path})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("attach %d: %v", i, err)
		}
	}
	s, err := state.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list, err := s.Attachments()
	if err != nil || len(list) != n {
		t.Fatalf("%d attachments after %d concurrent attaches (%v)", len(list), n, err)
	}
	for i := range list {
		if err := s.VerifyLinks(&list[i]); err != nil {
			t.Error(err)
		}
	}
}
