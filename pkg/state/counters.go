package state

import (
	"errors"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// counterMaps are the per-attachment counters of bpf/accounting.h and
// bpf/counters.h. The programs only look entries up (allocating on the
// packet path would cost and could fail), so each attachment's zeroed
// entries are created here before its policy and removed at detach.
type counterMaps struct {
	traffic       *ebpf.Map
	decisions     *ebpf.Map
	userDecisions *ebpf.Map
}

// CounterKey is the key of an attachment's entries in the counter maps:
// the key current_policy() returns in bpf/portcullis.c (the cgroup id).
func (a *Attachment) CounterKey() uint64 { return policyKey(a) }

// createCounters creates the zeroed traffic and decision entries of the
// attachment whose programs use key (the key current_policy() returns: the
// cgroup id).
func (s *State) createCounters(key uint64) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := s.putPerCPU(s.counters.traffic, &key, make([]bpfobj.PortcullisTrafficCounts, cpus)); err != nil {
		return err
	}
	if err := s.putPerCPU(s.counters.decisions, &key, make([]bpfobj.PortcullisDecisionCounts, cpus)); err != nil {
		s.deleteCounters(key)
		return err
	}
	if err := s.put(s.counters.userDecisions, &key, &bpfobj.PortcullisDecisionCounts{}); err != nil {
		s.deleteCounters(key)
		return err
	}
	return nil
}

// deleteCounters removes them; missing entries are not an error.
func (s *State) deleteCounters(key uint64) {
	s.counters.traffic.Delete(&key)
	s.counters.decisions.Delete(&key)
	s.counters.userDecisions.Delete(&key)
}

// putPerCPU is put for a per-CPU hash without preallocation. The kernel
// takes such entries from a per-CPU cache that it refills asynchronously
// (bpf_mem_alloc, from irq_work), so inserts in quick succession, as when
// thousands of containers are attached, can fail with ENOMEM for a moment
// although memory is plentiful: retry for up to 100 ms.
func (s *State) putPerCPU(m *ebpf.Map, key, value any) error {
	deadline := time.Now().Add(100 * time.Millisecond)
	for {
		err := s.put(m, key, value)
		if err == nil || !errors.Is(err, unix.ENOMEM) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Microsecond)
	}
}
