package state

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// TerminationDir holds the termination iterators of bpf/terminate.c,
// loaded once with the state so that a detach pays only for the scan
// (loading them needs the kernel's BTF, about 30 ms a time):
//
//	terminate/terminate_tcp, terminate/terminate_udp   iterator links
//	terminate/targets                                  the map they read
//
// pkg/terminate locks the folder while it fills targets and runs them.
// It is absent when the kernel could not load the programs (no
// bpf_sock_destroy): the state works, only termination is unavailable.
func (s *State) TerminationDir() string { return filepath.Join(s.dir, "terminate") }

// terminationShared are the maps of the state the termination programs
// use: policies (their way to tell an attached container's socket),
// sock_owners (the attachment a socket was created in) and the decision
// counters (socket_terminated).
var terminationShared = []string{bpfobj.TerminateMapPolicies, bpfobj.TerminateMapSockOwners,
	bpfobj.TerminateMapDecisions, bpfobj.TerminateMapDecisionsUser}

// pinTermination loads the termination programs, sharing the state's maps
// (terminationShared, from maps), and pins their iterator links and
// targets map in dir. On error dir is not left behind.
func pinTermination(dir string, maps map[string]*ebpf.Map) (err error) {
	spec, err := bpfobj.LoadTerminate()
	if err != nil {
		return err
	}
	replace := map[string]*ebpf.Map{}
	for _, name := range terminationShared {
		m := maps[name]
		if m == nil {
			return fmt.Errorf("termination programs: no map %s", name)
		}
		// A replacement map must match the spec, size included.
		spec.Maps[name].MaxEntries = m.MaxEntries()
		replace[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return err
	}
	defer coll.Close()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := coll.Maps[bpfobj.TerminateMapTargets].Pin(filepath.Join(dir, bpfobj.TerminateMapTargets)); err != nil {
		return err
	}
	for _, name := range []string{bpfobj.TerminateProgTerminateTcp, bpfobj.TerminateProgTerminateUdp} {
		l, err := link.AttachIter(link.IterOptions{Program: coll.Programs[name]})
		if err != nil {
			return fmt.Errorf("iterator %s: %w", name, err)
		}
		err = l.Pin(filepath.Join(dir, name))
		l.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
