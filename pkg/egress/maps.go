package egress

import (
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Maps are the pinned egress maps of one state.
type Maps struct {
	rules   *ebpf.Map // LPM trie: (owner, prefix) -> candidate rules
	members *ebpf.Map // address -> bitmap of its groups (read by the programs)
	bits    *ebpf.Map // group name -> bit and how many attachments name it
	refs    *ebpf.Map // (address, bit) -> how many attachments give it
}

// Open opens the egress maps pinned in the state directory dir. The caller
// holds the state's lock.
func Open(dir string) (*Maps, error) {
	m := &Maps{}
	if err := bpfobj.OpenPinned(dir, map[string]**ebpf.Map{
		bpfobj.PortcullisMapEgressRules:  &m.rules,
		bpfobj.PortcullisMapGroupMembers: &m.members,
		bpfobj.PortcullisMapGroupBits:    &m.bits,
		bpfobj.PortcullisMapGroupRefs:    &m.refs,
	}); err != nil {
		return nil, err
	}
	return m, nil
}

// Close releases the maps.
func (m *Maps) Close() {
	for _, mp := range []*ebpf.Map{m.rules, m.members, m.bits, m.refs} {
		if mp != nil {
			mp.Close()
		}
	}
}

// Set moves owner from policy old (nil: a new attachment) to policy p
// (nil: the attachment goes away): its rules, the group membership of its
// addresses and the group bits it holds. New entries are written before
// stale ones are deleted, so a connect never sees the owner without rules
// in between. It touches only the owner's own entries, whatever the
// number of attachments.
func (m *Maps) Set(owner uint64, old, p *policy.Policy) error {
	var next []string
	if p != nil {
		next = p.ReferencedGroups()
	}
	bits, err := m.acquire(next)
	if err != nil {
		return err
	}
	var fresh []Entry
	if p != nil {
		if fresh, err = Compile(owner, p, bits); err != nil {
			m.release(next)
			return err
		}
	}
	keep := map[bpfobj.PortcullisEgressKey]bool{}
	for i := range fresh {
		if err := m.rules.Update(&fresh[i].Key, &fresh[i].Value, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("egress rules map: %w", err)
		}
		keep[fresh[i].Key] = true
	}
	if old != nil {
		// old's groups are still held, so its bits are what it was
		// compiled with.
		stale, _ := Compile(owner, old, bits)
		for i := range stale {
			if !keep[stale[i].Key] {
				m.rules.Delete(&stale[i].Key)
			}
		}
	}
	if p != nil {
		if err := m.addMembers(p, bits, +1); err != nil {
			return err
		}
	}
	if old != nil {
		if err := m.addMembers(old, bits, -1); err != nil {
			return err
		}
		return m.release(old.ReferencedGroups())
	}
	return nil
}

type groupName [64]byte

func nameKey(g string) groupName {
	var k groupName
	copy(k[:], g)
	return k
}

func (k groupName) String() string {
	n := 0
	for n < len(k) && k[n] != 0 {
		n++
	}
	return string(k[:n])
}

// Bits returns the bit of every group in use.
func (m *Maps) Bits() (map[string]uint, error) {
	var (
		k groupName
		v bpfobj.PortcullisGroupBit
	)
	bits := map[string]uint{}
	iter := m.bits.Iterate()
	for iter.Next(&k, &v) {
		bits[k.String()] = uint(v.Bit)
	}
	return bits, iter.Err()
}

func distinct(names []string) []string {
	sort.Strings(names)
	var out []string
	for i, n := range names {
		if i == 0 || n != names[i-1] {
			out = append(out, n)
		}
	}
	return out
}

// acquire takes a reference on each group, giving a new group the lowest
// free bit; bits in use never change, so other containers' compiled rules
// stay right. It returns every group's bit.
func (m *Maps) acquire(groups []string) (map[string]uint, error) {
	bits, err := m.Bits()
	if err != nil {
		return nil, err
	}
	groups = distinct(groups)
	for i, g := range groups {
		k := nameKey(g)
		var v bpfobj.PortcullisGroupBit
		err := m.bits.Lookup(&k, &v)
		switch {
		case err == nil:
			v.Refs++
		case errors.Is(err, ebpf.ErrKeyNotExist):
			v = bpfobj.PortcullisGroupBit{Bit: freeBit(bits), Refs: 1}
			if v.Bit >= policy.MaxGroups {
				m.release(groups[:i])
				return nil, fmt.Errorf("groups: %q would be group number %d in use on this host; at most %d are supported", g, len(bits)+1, policy.MaxGroups)
			}
			bits[g] = uint(v.Bit)
		default:
			m.release(groups[:i])
			return nil, err
		}
		if err := m.bits.Update(&k, &v, ebpf.UpdateAny); err != nil {
			m.release(groups[:i])
			return nil, fmt.Errorf("group bits map: %w", err)
		}
	}
	return bits, nil
}

func freeBit(bits map[string]uint) uint32 {
	used := map[uint]bool{}
	for _, b := range bits {
		used[b] = true
	}
	bit := uint(0)
	for used[bit] {
		bit++
	}
	return uint32(bit)
}

// release drops a reference on each group; a group nobody names any more
// frees its bit.
func (m *Maps) release(groups []string) error {
	var errs []error
	for _, g := range distinct(groups) {
		k := nameKey(g)
		var v bpfobj.PortcullisGroupBit
		if err := m.bits.Lookup(&k, &v); err != nil {
			continue
		}
		if v.Refs <= 1 {
			errs = append(errs, ignoreMissing(m.bits.Delete(&k)))
			continue
		}
		v.Refs--
		errs = append(errs, m.bits.Update(&k, &v, ebpf.UpdateExist))
	}
	return errors.Join(errs...)
}

// addMembers adds (delta +1) or removes (-1) the policy's groups on each
// of its addresses. An address may be shared (host-network containers,
// loopback), so each (address, group) is counted and the address keeps a
// group while any attachment gives it.
func (m *Maps) addMembers(p *policy.Policy, bits map[string]uint, delta int) error {
	for _, addr := range p.Addresses {
		words := Words(addr)
		for _, g := range distinct(append([]string(nil), p.Groups...)) {
			bit, ok := bits[g]
			if !ok {
				continue
			}
			key := bpfobj.PortcullisMemberKey{Addr: words, Bit: uint32(bit)}
			var refs uint32
			if err := m.refs.Lookup(&key, &refs); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
			if delta < 0 && refs == 0 {
				continue
			}
			refs = uint32(int(refs) + delta)
			var err error
			if refs == 0 {
				err = ignoreMissing(m.refs.Delete(&key))
			} else {
				err = m.refs.Update(&key, refs, ebpf.UpdateAny)
			}
			if err != nil {
				return fmt.Errorf("group refs map: %w", err)
			}
			if err := m.setMember(words, bit, refs > 0); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *Maps) setMember(words [4]uint32, bit uint, on bool) error {
	key := bpfobj.PortcullisEgressAddr{Addr: words}
	var groups uint64
	if err := m.members.Lookup(&key, &groups); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if on {
		groups |= 1 << bit
	} else {
		groups &^= 1 << bit
	}
	if groups == 0 {
		return ignoreMissing(m.members.Delete(&key))
	}
	if err := m.members.Update(&key, groups, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("group members map: %w", err)
	}
	return nil
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}
