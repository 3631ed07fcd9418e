package kernel

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// terminationPrograms is the definitive probe for socket termination: the
// kfunc and the iterators being in BTF does not mean the verifier lets
// iter/tcp and iter/udp call bpf_sock_destroy, so load the real programs
// and create their iterator links.
func terminationPrograms() Feature {
	f := Feature{Name: "load termination programs", OK: true, Detail: "iter/tcp, iter/udp calling bpf_sock_destroy"}
	err := func() error {
		spec, err := bpfobj.LoadTerminate()
		if err != nil {
			return err
		}
		// The real policies map is the pinned one; a small one will do.
		spec.Maps[bpfobj.TerminateMapPolicies].MaxEntries = 1
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			return err
		}
		defer coll.Close()
		for name, prog := range coll.Programs {
			l, err := link.AttachIter(link.IterOptions{Program: prog})
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			l.Close()
		}
		return nil
	}()
	if err != nil {
		f.OK, f.Detail = false, err.Error()
	}
	return f
}
