// Package limits writes the connection caps of bpf/limits.h and reads the
// live counts back.
//
// The programs count a container's outgoing TCP connections and connected
// UDP sockets per destination and in total, following each socket's
// lifecycle (connect, TCP_CLOSE, close); this package only says what the
// caps are and shows the counters.
package limits

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Maps are the pinned limits maps of one state.
type Maps struct {
	limits *ebpf.Map
	counts *ebpf.Map
	slots  *ebpf.Map // socket cookie -> what the socket holds
}

// Open opens the maps pinned in the state directory dir.
func Open(dir string) (*Maps, error) {
	m := &Maps{}
	if err := bpfobj.OpenPinned(dir, map[string]**ebpf.Map{
		bpfobj.PortcullisMapLimits:     &m.limits,
		bpfobj.PortcullisMapConnCounts: &m.counts,
		bpfobj.PortcullisMapConnSlots:  &m.slots,
	}); err != nil {
		return nil, err
	}
	return m, nil
}

// Close releases the maps.
func (m *Maps) Close() {
	for _, mp := range []*ebpf.Map{m.limits, m.counts, m.slots} {
		if mp != nil {
			mp.Close()
		}
	}
}

// Set gives owner the caps of l, or removes them (l nil). Changing the caps
// of an owner that has some keeps its counts: live connections stay
// counted, and only new connects are held to the new caps.
func (m *Maps) Set(owner uint64, l *policy.ConnectionLimits) error {
	var cur bpfobj.PortcullisConnLimits
	err := m.limits.Lookup(&owner, &cur)
	had := err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if l == nil {
		if had {
			return m.Forget(owner)
		}
		return nil
	}
	if !had {
		// A new generation: sockets counted under an earlier attachment
		// with the same key never give back a slot of this one.
		cur.Generation = uint64(time.Now().UnixNano())
	}
	cur.PerDestination, cur.Total = l.PerDestination, l.Total
	if err := m.limits.Update(&owner, &cur, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("limits map: %w", err)
	}
	return nil
}

// Forget removes owner's caps, counters and the slots of its sockets that
// are still open (their release no longer runs once detached).
func (m *Maps) Forget(owner uint64) error {
	if err := m.limits.Delete(&owner); errors.Is(err, ebpf.ErrKeyNotExist) {
		// The programs count only for an owner with caps, and caps
		// are only removed here: without them there is nothing to
		// find, and each walk reads every bucket of a 262,144-entry
		// map (0.3 ms of each detach).
		return nil
	} else if err != nil {
		return err
	}
	keys, _, err := m.list(owner)
	for i := range keys {
		m.counts.Delete(&keys[i])
	}
	var (
		cookie  uint64
		slot    bpfobj.PortcullisConnSlot
		cookies []uint64
	)
	iter := m.slots.Iterate()
	for iter.Next(&cookie, &slot) {
		if slot.Key.Owner == owner {
			cookies = append(cookies, cookie)
		}
	}
	for _, c := range cookies {
		m.slots.Delete(&c)
	}
	return errors.Join(err, iter.Err())
}

func (m *Maps) list(owner uint64) ([]bpfobj.PortcullisConnKey, []uint64, error) {
	var (
		key    bpfobj.PortcullisConnKey
		count  uint64
		keys   []bpfobj.PortcullisConnKey
		counts []uint64
	)
	iter := m.counts.Iterate()
	for iter.Next(&key, &count) {
		if key.Owner == owner {
			keys = append(keys, key)
			counts = append(counts, count)
		}
	}
	return keys, counts, iter.Err()
}

// Destination is the count of one destination.
type Destination struct {
	Destination string `json:"destination"`
	Protocol    string `json:"protocol"`
	Count       uint64 `json:"count"`
}

// Usage is what an owner holds now against its caps.
type Usage struct {
	PerDestination uint32        `json:"perDestination,omitempty"`
	Total          uint32        `json:"total,omitempty"`
	Live           uint64        `json:"live"`
	Destinations   []Destination `json:"destinations,omitempty"`
}

// Usage reads owner's counters; nil when it has no caps.
func (m *Maps) Usage(owner uint64) (*Usage, error) {
	all, err := m.Usages(map[uint64]string{owner: ""})
	return all[owner], err
}

// Usages reads the counters of every owner in owners that has caps, in one
// pass over the counters.
func (m *Maps) Usages(owners map[uint64]string) (map[uint64]*Usage, error) {
	out := map[uint64]*Usage{}
	var (
		owner uint64
		cur   bpfobj.PortcullisConnLimits
	)
	iter := m.limits.Iterate()
	for iter.Next(&owner, &cur) {
		if _, ok := owners[owner]; ok {
			out[owner] = &Usage{PerDestination: cur.PerDestination, Total: cur.Total}
		}
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return out, nil
	}
	var (
		key   bpfobj.PortcullisConnKey
		count uint64
	)
	counts := m.counts.Iterate()
	for counts.Next(&key, &count) {
		u := out[key.Owner]
		switch {
		case u == nil:
		case key.Protocol == 0:
			u.Live = count
		case count > 0:
			proto := "tcp"
			if key.Protocol == 17 {
				proto = "udp"
			}
			u.Destinations = append(u.Destinations, Destination{
				Destination: netip.AddrPortFrom(addrOf(key.Addr), key.Port).String(),
				Protocol:    proto,
				Count:       count,
			})
		}
	}
	if err := counts.Err(); err != nil {
		return nil, err
	}
	for _, u := range out {
		sort.Slice(u.Destinations, func(i, j int) bool {
			a, b := u.Destinations[i], u.Destinations[j]
			if a.Count != b.Count {
				return a.Count > b.Count
			}
			return a.Destination+a.Protocol < b.Destination+b.Protocol
		})
	}
	return out, nil
}

func addrOf(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, x := range w {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	return netip.AddrFrom16(b).Unmap()
}
