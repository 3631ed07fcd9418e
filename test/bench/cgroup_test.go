package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// enterCgroup moves the benchmark process (all its threads) into cg and
// returns a function that moves it back.
func enterCgroup(b *testing.B, cg cgroup.Cgroup) func() {
	b.Helper()
	self, err := cgroup.OfPID(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	move := func(to string) {
		if err := os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			b.Fatalf("move into %s: %v", to, err)
		}
	}
	move(cg.Path)
	return func() { move(self.Path) }
}
