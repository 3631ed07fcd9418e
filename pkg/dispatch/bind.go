package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Binding sends Protocol traffic to any address of Prefix on ports
// First-Last to the socket registered under Label.
type Binding struct {
	Label    string
	Protocol policy.Protocol
	Prefix   netip.Prefix
	First    uint16
	Last     uint16
}

func (b Binding) String() string {
	return fmt.Sprintf("%s %s %s", b.Protocol, b.Prefix, b.Ports())
}

// Ports is the port range as written: "N" or "N-M".
func (b Binding) Ports() string {
	return policy.PortRange{First: b.First, Last: b.Last}.String()
}

// ParseBinding reads the CLI's LABEL PROTOCOL PREFIX PORTS.
func ParseBinding(label, protocol, prefix, ports string) (Binding, error) {
	return FromPolicy(policy.Dispatch{Label: label, Protocol: policy.Protocol(protocol), Prefix: prefix, Ports: ports})
}

// FromPolicy turns a policy's dispatch entry into a binding.
func FromPolicy(d policy.Dispatch) (Binding, error) {
	var b Binding
	var err error
	if err = policy.CheckDispatchLabel(d.Label); err != nil {
		return b, err
	}
	b.Label = d.Label
	if b.Protocol, err = policy.ParseDispatchProtocol(string(d.Protocol)); err != nil {
		return b, err
	}
	if b.Prefix, err = policy.ParseDispatchPrefix(d.Prefix); err != nil {
		return b, err
	}
	if b.First, b.Last, err = policy.ParseDispatchPorts(d.Ports); err != nil {
		return b, err
	}
	return b, nil
}

// mapped is the prefix in the kernel's form: IPv4 as v4-mapped IPv6.
func mapped(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
	}
	return p
}

// overlaps tells whether some packet could match both bindings.
func overlaps(a, b Binding) bool {
	return a.Protocol == b.Protocol && mapped(a.Prefix).Overlaps(mapped(b.Prefix)) &&
		a.First <= b.Last && b.First <= a.Last
}

func addrWords(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b)
}

func (b Binding) rule() bpfobj.DispatchDispatchRule {
	p := mapped(b.Prefix)
	return bpfobj.DispatchDispatchRule{
		Addr:      addrWords(p.Addr()),
		Protocol:  b.Protocol.Number(),
		Prefixlen: uint8(p.Bits()),
		First:     b.First,
		Last:      b.Last,
	}
}

func bindingOf(r *bpfobj.DispatchDispatchRule, label string) Binding {
	p := netip.PrefixFrom(wordsAddr(r.Addr), int(r.Prefixlen))
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	proto := policy.TCP
	if r.Protocol == policy.UDP.Number() {
		proto = policy.UDP
	}
	return Binding{Label: label, Protocol: proto, Prefix: p, First: r.First, Last: r.Last}
}

// block is one aligned run of 2^level ports starting at start.
type block struct {
	start uint16
	level uint8
}

// blocksOf splits first-last into the fewest aligned power-of-two blocks,
// the form the trie can match (see bpf/dispatch.c).
func blocksOf(first, last uint16) []block {
	var out []block
	for lo, hi := uint32(first), uint32(last); lo <= hi; {
		level := uint8(0)
		for level < 16 {
			size := uint32(1) << (level + 1)
			if lo%size != 0 || lo+size-1 > hi {
				break
			}
			level++
		}
		out = append(out, block{uint16(lo), level})
		lo += 1 << level
	}
	return out
}

func trieKey(r *bpfobj.DispatchDispatchRule, blk block) bpfobj.DispatchDispatchKey {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], blk.start)
	return bpfobj.DispatchDispatchKey{
		Prefixlen: 32 + uint32(r.Prefixlen),
		Protocol:  r.Protocol,
		Level:     blk.level,
		Port:      binary.NativeEndian.Uint16(port[:]),
		Addr:      r.Addr,
	}
}

func trieValue(r *bpfobj.DispatchDispatchRule, dest uint32) bpfobj.DispatchDispatchBinding {
	return bpfobj.DispatchDispatchBinding{Dest: dest, Ports: uint32(r.Last) - uint32(r.First) + 1, Prefixlen: uint32(r.Prefixlen)}
}

// wins orders bindings that produce the same trie entry (same protocol,
// prefix and block): the one with fewer ports, then the older destination.
func wins(a, b *bpfobj.DispatchDispatchBinding) bool {
	if a.Ports != b.Ports {
		return a.Ports < b.Ports
	}
	return a.Dest < b.Dest
}

// Bind adds a binding. It refuses one that overlaps a binding of another
// container than the one owning the label, and one that exists under
// another label; binding the same thing again does nothing.
func (d *Dispatcher) Bind(b Binding) error {
	owners, err := d.owners()
	if err != nil {
		return err
	}
	if err := d.checkOverlap(b, owners); err != nil {
		return err
	}
	r := b.rule()
	var existing uint32
	if err := d.maps.Rules.Lookup(&r, &existing); err == nil {
		if label, _, _ := d.destination(existing); label != b.Label {
			return fmt.Errorf("binding %s already belongs to label %s (unbind it first)", b, label)
		}
		return nil
	}
	dest, err := d.destinationID(b.Label, b.Protocol, true)
	if err != nil {
		return err
	}
	if err := put(d.maps.Rules, &r, &dest, "rules"); err != nil {
		d.dropDestinationIfUnused(dest)
		return err
	}
	value := trieValue(&r, dest)
	var mask uint32
	d.maps.Levels.Lookup(uint32(0), &mask)
	for _, blk := range blocksOf(b.First, b.Last) {
		key := trieKey(&r, blk)
		var cur bpfobj.DispatchDispatchBinding
		// A trie lookup finds the longest match: only an entry of the
		// same prefix is the same entry.
		if d.maps.Blocks.Lookup(&key, &cur) == nil && cur.Prefixlen == value.Prefixlen && !wins(&value, &cur) {
			continue
		}
		if err := put(d.maps.Blocks, &key, &value, "blocks"); err != nil {
			d.Unbind(b)
			return err
		}
		mask |= 1 << blk.level
	}
	return d.maps.Levels.Update(uint32(0), mask, ebpf.UpdateAny)
}

// Unbind removes a binding; the label must be the one it was bound to.
func (d *Dispatcher) Unbind(b Binding) error {
	r := b.rule()
	var dest uint32
	if err := d.maps.Rules.Lookup(&r, &dest); err != nil {
		return fmt.Errorf("no binding %s", b)
	}
	if label, _, _ := d.destination(dest); label != b.Label {
		return fmt.Errorf("binding %s belongs to label %s, not %s", b, label, b.Label)
	}
	if err := d.maps.Rules.Delete(&r); err != nil {
		return fmt.Errorf("unbind %s: %w", b, err)
	}
	return d.recompile([]bpfobj.DispatchDispatchRule{r})
}

// recompile rewrites the trie entries the removed rules produced from the
// rules that remain, resets the levels bitmap and drops destinations left
// with neither a binding nor a socket.
func (d *Dispatcher) recompile(removed []bpfobj.DispatchDispatchRule) error {
	want := map[bpfobj.DispatchDispatchKey]*bpfobj.DispatchDispatchBinding{}
	for i := range removed {
		for _, blk := range blocksOf(removed[i].First, removed[i].Last) {
			want[trieKey(&removed[i], blk)] = nil
		}
	}
	var mask uint32
	used := map[uint32]bool{}
	if err := d.eachRule(func(r *bpfobj.DispatchDispatchRule, dest uint32) {
		used[dest] = true
		value := trieValue(r, dest)
		for _, blk := range blocksOf(r.First, r.Last) {
			mask |= 1 << blk.level
			key := trieKey(r, blk)
			if cur, ok := want[key]; ok && (cur == nil || wins(&value, cur)) {
				v := value
				want[key] = &v
			}
		}
	}); err != nil {
		return err
	}
	for key, value := range want {
		var err error
		if value == nil {
			err = d.maps.Blocks.Delete(&key)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
			}
		} else {
			err = d.maps.Blocks.Update(&key, value, ebpf.UpdateAny)
		}
		if err != nil {
			return fmt.Errorf("update dispatch trie: %w", err)
		}
	}
	if err := d.maps.Levels.Update(uint32(0), mask, ebpf.UpdateAny); err != nil {
		return err
	}
	return d.dropUnusedDestinations(used)
}

// put inserts a map entry, turning a full map into an error to act on.
func put(m *ebpf.Map, key, value any, name string) error {
	if err := m.Update(key, value, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("dispatch map %s is full (%d entries): unbind something first", name, m.MaxEntries())
		}
		return fmt.Errorf("update dispatch map %s: %w", name, err)
	}
	return nil
}
