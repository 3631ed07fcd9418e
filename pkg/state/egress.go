package state

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

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
	if err := em.Set(a.CgroupID, old, &a.Policy); err != nil {
		return err
	}
	lm, err := limits.Open(s.dir)
	if err != nil {
		return err
	}
	defer lm.Close()
	return lm.Set(a.CgroupID, a.Policy.ConnectionLimits)
}

// forgetGuards removes a's caps, counters, rules and group membership.
func (s *State) forgetGuards(a *Attachment) error {
	em, err := egress.Open(s.dir)
	if err != nil {
		return err
	}
	defer em.Close()
	if err := em.Set(a.CgroupID, &a.Policy, nil); err != nil {
		return err
	}
	lm, err := limits.Open(s.dir)
	if err != nil {
		return err
	}
	defer lm.Close()
	return lm.Forget(a.CgroupID)
}

// Usage returns what an attachment holds against its connection caps (nil
// without caps).
func (s *State) Usage(a *Attachment) (*limits.Usage, error) {
	lm, err := limits.Open(s.dir)
	if err != nil {
		return nil, err
	}
	defer lm.Close()
	return lm.Usage(a.CgroupID)
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
	return &next, nil
}

// replacePolicy moves an attachment from old's policy to next's: new map
// entries are written before stale ones are removed.
func (s *State) replacePolicy(old, next *Attachment) error {
	record, err := encodeRecord(next)
	if err != nil {
		return err
	}
	was, now := compile(old.CgroupID, &old.Policy), compile(next.CgroupID, &next.Policy)
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
	if err := s.put(s.policies, &next.CgroupID, &now.policy); err != nil {
		return err
	}
	if err := s.syncGuards(next, &old.Policy); err != nil {
		return err
	}
	if err := s.put(s.records, recordKey(next.ID), record); err != nil {
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

// A record larger than the kernel's record value is stored gzipped: a
// policy with a thousand egress rules is mostly repetition. JSON never
// starts with gzip's magic bytes, so the two forms are told apart.
func compressRecord(data []byte) []byte {
	var buf bytes.Buffer
	w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

// maxRecord bounds what a gzipped record may expand to.
const maxRecord = 4 << 20

func expandRecord(data []byte) ([]byte, error) {
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		return data, nil
	}
	r, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(r, maxRecord+1))
	if err != nil {
		return nil, err
	}
	if len(out) > maxRecord {
		return nil, fmt.Errorf("expands beyond %d bytes", maxRecord)
	}
	return out, nil
}
