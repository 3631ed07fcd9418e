package terminate

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Denied destroys (or, with dryRun, lists) the TCP and connected UDP
// sockets of one attachment whose peer its egress rules deny: run after
// `policy set --terminate` replaced the rules, it ends the connections the
// new policy would not have let start. The iterators of
// bpf/egress_terminate.c read the pinned egress maps, so they judge each
// peer exactly as connect(2) does now.
func Denied(s *state.State, a *state.Attachment, dryRun bool) (*Report, error) {
	coll, p, err := loadDenied(s.Dir(), a, dryRun)
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	defer p.close()
	report := &Report{DryRun: dryRun, Targets: []string{"egress-denied peers of " + a.ID}}
	paths := namespaces([]string{a.NetNS})
	if a.KeyedByNetNS() {
		// Every socket of its namespace is the container's, and only
		// those: the host's namespace is not scanned.
		paths = paths[1:]
	}
	return report, p.scanAll(paths, report)
}

// loadDenied loads bpf/egress_terminate.c for one attachment. Unlike the
// backend iterators these are not pinned: a policy change is rare, and the
// container and its rules are load-time constants.
func loadDenied(stateDir string, a *state.Attachment, dryRun bool) (_ *ebpf.Collection, _ *programs, err error) {
	spec, err := bpfobj.LoadEgressTerminate()
	if err != nil {
		return nil, nil, err
	}
	cgroupID := a.CgroupID
	if a.KeyedByNetNS() {
		cgroupID = 0 // the namespace, not a cgroup (see Denied)
	}
	consts := map[string]any{"target_cgroup": cgroupID, "target_owner": a.PolicyKey(), "dry_run": uint8(0)}
	if dryRun {
		consts["dry_run"] = uint8(1)
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, nil, fmt.Errorf("egress termination %s: %w", name, err)
		}
	}
	// The programs read the pinned egress maps and count what they
	// destroy in the attachment's decision counters.
	names := []string{bpfobj.EgressTerminateMapEgressRules, bpfobj.EgressTerminateMapGroupMembers, bpfobj.EgressTerminateMapGroupBits, bpfobj.EgressTerminateMapSvcListeners,
		bpfobj.EgressTerminateMapDecisions, bpfobj.EgressTerminateMapDecisionsUser, bpfobj.EgressTerminateMapSockOwners}
	pinned := make([]*ebpf.Map, len(names))
	dst := map[string]**ebpf.Map{}
	for i, name := range names {
		dst[name] = &pinned[i]
	}
	if err := bpfobj.OpenPinned(stateDir, dst); err != nil {
		return nil, nil, err
	}
	replace := map[string]*ebpf.Map{}
	for i, name := range names {
		replace[name] = pinned[i]
		defer pinned[i].Close() // the collection holds its own reference
		// A state loaded with other sizes (load --max-*) has other
		// max_entries; the replacement must match.
		spec.Maps[name].MaxEntries = pinned[i].MaxEntries()
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: load egress termination programs: %v", ErrUnsupported, err)
	}
	p := &programs{dryRun: dryRun}
	defer func() {
		if err != nil {
			p.close()
			coll.Close()
		}
	}()
	for _, name := range []string{bpfobj.EgressTerminateProgDeniedTcp, bpfobj.EgressTerminateProgDeniedUdp} {
		l, err := link.AttachIter(link.IterOptions{Program: coll.Programs[name]})
		if err != nil {
			return nil, nil, fmt.Errorf("attach iterator %s: %w", name, err)
		}
		p.links = append(p.links, l)
		p.protos = append(p.protos, map[string]string{bpfobj.EgressTerminateProgDeniedTcp: "tcp", bpfobj.EgressTerminateProgDeniedUdp: "udp"}[name])
	}
	return coll, p, nil
}
