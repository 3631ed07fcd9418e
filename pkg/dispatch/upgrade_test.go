package dispatch_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// portcullisctl upgrade swaps a dispatcher's sk_lookup program in place:
// its bindings and registered socket keep serving, through a new program.
func TestUpgradeKeepsDispatching(t *testing.T) {
	w := newWorld(t)
	web := w.serve(cgroup.Cgroup{}, "tcp", "127.0.0.1:16101", "web")
	w.must("bind", "web", "tcp", "127.0.9.0/24", "80")
	w.must("register", "web", "--pid", web.pid())
	w.expect(web, "127.0.9.1:80")
	links, _ := filepath.Glob(filepath.Join(w.dir, "dispatch", "netns-*", "link"))
	if len(links) != 1 {
		t.Fatalf("dispatcher links: %v", links)
	}
	prog := func() uint32 { return uint32(testenv.LinkProgram(t, links[0])) }
	before := prog()
	// Layout 1: no record, the old program table name.
	os.Remove(filepath.Join(w.dir, "maps", "layout"))
	os.Rename(filepath.Join(w.dir, "maps", "program_table"), filepath.Join(w.dir, "maps", "cgroup_programs"))
	if _, err := state.Upgrade(w.dir); err != nil {
		t.Fatal(err)
	}
	if prog() == before {
		t.Error("the dispatcher still runs its old program")
	}
	w.expect(web, "127.0.9.2:80")
	if l := w.list(); len(l.Destinations) != 1 || l.Destinations[0].Hits < 2 {
		t.Errorf("after the upgrade: %+v", l)
	}
}
