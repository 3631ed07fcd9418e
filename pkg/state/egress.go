package state

import (
	"fmt"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/egress"
	"github.com/portcullis-net/portcullis/pkg/hostaddr"
	"github.com/portcullis-net/portcullis/pkg/limits"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
)

// syncGuards writes a's connection caps and egress rules (old is the
// policy it had, nil for a new attachment).
func (s *State) syncGuards(a *Attachment, old *policy.Policy) error {
	em, err := egress.Open(s.dir)
	if err != nil {
		return err
	}
	defer em.Close()
	lm, err := limits.Open(s.dir)
	if err != nil {
		return err
	}
	defer lm.Close()
	if err := em.Set(policyKey(a), old, &a.Policy); err != nil {
		return err
	}
	if err := lm.Set(policyKey(a), a.Policy.ConnectionLimits); err != nil {
		em.Set(policyKey(a), &a.Policy, old) // back to what it was
		return err
	}
	return nil
}

// forgetGuards removes a's caps, counters, rules and group membership.
func (s *State) forgetGuards(a *Attachment) error {
	em, err := egress.Open(s.dir)
	if err != nil {
		return err
	}
	defer em.Close()
	if err := em.Set(policyKey(a), &a.Policy, nil); err != nil {
		return err
	}
	lm, err := limits.Open(s.dir)
	if err != nil {
		return err
	}
	defer lm.Close()
	return lm.Forget(policyKey(a))
}

// PolicyKey is the key of the attachment's entries in the per-container
// maps: what current_policy() returns in the programs.
func (a *Attachment) PolicyKey() uint64 { return policyKey(a) }

// Usage returns what an attachment holds against its connection caps (nil
// without caps).
func (s *State) Usage(a *Attachment) (*limits.Usage, error) {
	all, err := s.Usages([]Attachment{*a})
	return all[a.ID], err
}

// Usages returns what each attachment with connection caps holds, by id,
// reading the counters once for all.
func (s *State) Usages(list []Attachment) (map[string]*limits.Usage, error) {
	lm, err := limits.Open(s.dir)
	if err != nil {
		return nil, err
	}
	defer lm.Close()
	keys := map[uint64]string{}
	for i := range list {
		keys[policyKey(&list[i])] = list[i].ID
	}
	byKey, err := lm.Usages(keys)
	if err != nil {
		return nil, err
	}
	out := map[string]*limits.Usage{}
	for key, u := range byKey {
		out[keys[key]] = u
	}
	return out, nil
}

// SetPolicy replaces an attachment's policy in place, without detaching:
// sockets keep their connections, and every later bind, connect and send
// sees the new policy. On failure the old policy is put back.
func (s *State) SetPolicy(id string, p *policy.Policy) (*Attachment, error) {
	old, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("invalid policy: %w", err)
	}
	if err := hostaddr.CheckLocal(old.NetNS, p.Addresses); err != nil {
		return nil, err
	}
	next := *old
	next.Policy = *p
	if err := s.replacePolicy(old, &next); err != nil {
		if rerr := s.replacePolicy(&next, old); rerr != nil {
			return nil, fmt.Errorf("%w (and putting the old policy back failed: %v)", err, rerr)
		}
		return nil, err
	}
	if err := s.runUpdateHooks(old, &next); err != nil {
		s.replacePolicy(&next, old)
		return nil, err
	}
	return &next, nil
}

// replacePolicy moves an attachment from old's policy to next's: new map
// entries are written before stale ones are removed.
func (s *State) replacePolicy(old, next *Attachment) error {
	record, err := encodeRecord(next)
	if err != nil {
		return err
	}
	was, now := compile(policyKey(old), &old.Policy), compile(policyKey(next), &next.Policy)
	for _, e := range now.portmaps {
		if err := s.put(s.portmaps, &e.key, &e.value); err != nil {
			return err
		}
	}
	for _, e := range was.portmaps {
		if !hasPortmap(now.portmaps, e.key) {
			s.portmaps.Delete(&e.key)
		}
	}
	// The sock_create variant changes only when marking does (attach and
	// upgrade link the right one): to the full program before a policy
	// that marks is written, back after one that does not.
	wasMarking, marking := marksSockets(&old.Policy), marksSockets(&next.Policy)
	if marking && !wasMarking {
		if err := s.relinkSockCreate(next, &next.Policy); err != nil {
			return err
		}
	}
	key := policyKey(next)
	if err := s.put(s.policies, &key, &now.policy); err != nil {
		return err
	}
	if wasMarking && !marking {
		if err := s.relinkSockCreate(next, &next.Policy); err != nil {
			return err
		}
	}
	if err := s.syncGuards(next, &old.Policy); err != nil {
		return err
	}
	if err := s.putRecord(next.ID, record); err != nil {
		return err
	}
	var names []string
	for _, a := range []*Attachment{old, next} {
		for _, pr := range a.Policy.Provides {
			names = append(names, pr.Service)
		}
	}
	if len(names) == 0 {
		return nil
	}
	return s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		return m.Sync(names, providers)
	})
}

func hasPortmap(list []portmapEntry, key bpfobj.PortcullisPortmapKey) bool {
	for _, e := range list {
		if e.key == key {
			return true
		}
	}
	return false
}
