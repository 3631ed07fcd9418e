package dispatch

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// A destination is a label and a protocol: the bindings of a label for one
// protocol lead to its one registered socket of that protocol. Its id
// indexes the sockets and counters maps; 0 is the counter of lookups no
// binding matched.

func destKey(label string, proto policy.Protocol) *bpfobj.DispatchDispatchDest {
	var k bpfobj.DispatchDispatchDest
	copy(k.Label[:], label)
	k.Protocol = proto.Number()
	return &k
}

func protocolOf(n uint8) policy.Protocol {
	if n == policy.UDP.Number() {
		return policy.UDP
	}
	return policy.TCP
}

func labelOf(k *bpfobj.DispatchDispatchDest) string {
	label, _, _ := bytes.Cut(k.Label[:], []byte{0})
	return string(label)
}

// destinations maps every destination id to its key.
func (d *Dispatcher) destinations() (map[uint32]bpfobj.DispatchDispatchDest, error) {
	out := map[uint32]bpfobj.DispatchDispatchDest{}
	var (
		k  bpfobj.DispatchDispatchDest
		id uint32
	)
	iter := d.maps.Destinations.Iterate()
	for iter.Next(&k, &id) {
		out[id] = k
	}
	return out, iter.Err()
}

// destination returns the label and protocol of an id.
func (d *Dispatcher) destination(id uint32) (string, policy.Protocol, error) {
	all, err := d.destinations()
	if err != nil {
		return "", "", err
	}
	k, ok := all[id]
	if !ok {
		return "", "", fmt.Errorf("destination %d is not recorded", id)
	}
	return labelOf(&k), protocolOf(k.Protocol), nil
}

// destinationID returns a destination's id, allocating the lowest free one
// (with zeroed counters) when create is set.
func (d *Dispatcher) destinationID(label string, proto policy.Protocol, create bool) (uint32, error) {
	var id uint32
	err := d.maps.Destinations.Lookup(destKey(label, proto), &id)
	if err == nil || !create {
		return id, err
	}
	all, err := d.destinations()
	if err != nil {
		return 0, err
	}
	for id = 1; id < d.maps.Sockets.MaxEntries(); id++ {
		if _, taken := all[id]; !taken {
			break
		}
	}
	if id >= d.maps.Sockets.MaxEntries() {
		return 0, fmt.Errorf("%d labels and protocols are in use, the most a dispatcher holds: unbind some", len(all))
	}
	zero := make([]bpfobj.DispatchDispatchCounters, ebpf.MustPossibleCPU())
	if err := d.maps.Counters.Update(id, zero, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("reset dispatch counters: %w", err)
	}
	d.maps.Sockets.Delete(id) // a stale socket never outlives its destination
	if err := put(d.maps.Destinations, destKey(label, proto), &id, "destinations"); err != nil {
		return 0, err
	}
	return id, nil
}

func (d *Dispatcher) hasSocket(id uint32) bool {
	var cookie uint64
	return d.maps.Sockets.Lookup(id, &cookie) == nil
}

// dropUnusedDestinations deletes destinations that no rule uses (used) and
// that hold no socket.
func (d *Dispatcher) dropUnusedDestinations(used map[uint32]bool) error {
	all, err := d.destinations()
	if err != nil {
		return err
	}
	for id, k := range all {
		if !used[id] && !d.hasSocket(id) {
			if err := d.maps.Destinations.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
		}
	}
	return nil
}

func (d *Dispatcher) dropDestinationIfUnused(id uint32) {
	used, err := d.usedDestinations()
	if err == nil && !used[id] {
		d.dropUnusedDestinations(used)
	}
}

// usedDestinations is the set of destinations some rule leads to.
func (d *Dispatcher) usedDestinations() (map[uint32]bool, error) {
	used := map[uint32]bool{}
	err := d.eachRule(func(_ *bpfobj.DispatchDispatchRule, dest uint32) { used[dest] = true })
	return used, err
}

// eachRule calls f with every binding as written and its destination.
func (d *Dispatcher) eachRule(f func(r *bpfobj.DispatchDispatchRule, dest uint32)) error {
	var (
		r    bpfobj.DispatchDispatchRule
		dest uint32
	)
	iter := d.maps.Rules.Iterate()
	for iter.Next(&r, &dest) {
		f(&r, dest)
	}
	return iter.Err()
}

// Unregister removes the sockets registered under a label (both
// protocols). The bindings stay: until a socket is registered again their
// connections are refused.
func (d *Dispatcher) Unregister(label string) error {
	found := false
	for _, proto := range []policy.Protocol{policy.TCP, policy.UDP} {
		id, err := d.destinationID(label, proto, false)
		if err != nil {
			continue
		}
		found = true
		if err := d.maps.Sockets.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unregister %s: %w", label, err)
		}
	}
	if !found {
		return fmt.Errorf("no label %s in network namespace %s", label, d.NetNS())
	}
	used, err := d.usedDestinations()
	if err != nil {
		return err
	}
	return d.dropUnusedDestinations(used)
}

// removeLabels removes every binding and socket of the labels.
func (d *Dispatcher) removeLabels(labels map[string]bool) error {
	all, err := d.destinations()
	if err != nil {
		return err
	}
	ids := map[uint32]bool{}
	for id, k := range all {
		if labels[labelOf(&k)] {
			ids[id] = true
			d.maps.Sockets.Delete(id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	var removed []bpfobj.DispatchDispatchRule
	if err := d.eachRule(func(r *bpfobj.DispatchDispatchRule, dest uint32) {
		if ids[dest] {
			removed = append(removed, *r)
		}
	}); err != nil {
		return err
	}
	for i := range removed {
		if err := d.maps.Rules.Delete(&removed[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return d.recompile(removed)
}
