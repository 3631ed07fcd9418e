package dispatch

import (
	"sort"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Counters are a destination's lookup counters, summed over CPUs.
type Counters struct {
	// Lookups counts connections and datagrams a binding of it matched.
	Lookups uint64 `json:"lookups"`
	// Hits were handed to the registered socket.
	Hits uint64 `json:"hits"`
	// Misses were refused: no socket, or one that could not take them.
	Misses uint64 `json:"misses"`
}

// Destination is a label and protocol, with its socket and bindings.
type Destination struct {
	Label    string          `json:"label"`
	Protocol policy.Protocol `json:"protocol"`
	// Owner is the attachment owning the label, if a container does.
	Owner string `json:"owner,omitempty"`
	// Socket is the registered socket's cookie; 0 when none is.
	Socket   uint64         `json:"socket"`
	Bindings []BindingEntry `json:"bindings"`
	Counters
}

// BindingEntry is a binding as listed.
type BindingEntry struct {
	Prefix string `json:"prefix"`
	Ports  string `json:"ports"`
}

// Listing is what a dispatcher holds.
type Listing struct {
	NetNS        string        `json:"netns"`
	Destinations []Destination `json:"destinations"`
	// Unmatched counts lookups no binding matched (left to the kernel).
	Unmatched uint64 `json:"unmatched"`
}

// List returns the destinations, sorted by label and protocol, each with
// its bindings (most specific first), socket and counters.
func (d *Dispatcher) List() (*Listing, error) {
	owners, err := d.owners()
	if err != nil {
		return nil, err
	}
	dests, err := d.destinations()
	if err != nil {
		return nil, err
	}
	byID := map[uint32]*Destination{}
	out := &Listing{NetNS: d.NetNS(), Destinations: []Destination{}}
	for id, k := range dests {
		dst := &Destination{Label: labelOf(&k), Protocol: protocolOf(k.Protocol), Bindings: []BindingEntry{}}
		if o := owners[dst.Label]; o != nil {
			dst.Owner = o.ID
		}
		d.maps.Sockets.Lookup(id, &dst.Socket)
		dst.Counters = d.counters(id)
		byID[id] = dst
	}
	all := map[uint32][]Binding{}
	if err := d.eachRule(func(r *bpfobj.DispatchDispatchRule, dest uint32) {
		all[dest] = append(all[dest], bindingOf(r, ""))
	}); err != nil {
		return nil, err
	}
	for id, dst := range byID {
		bs := all[id]
		sort.Slice(bs, func(i, j int) bool {
			if bs[i].Prefix.Bits() != bs[j].Prefix.Bits() {
				return bs[i].Prefix.Bits() > bs[j].Prefix.Bits()
			}
			if bs[i].Prefix.Addr() != bs[j].Prefix.Addr() {
				return bs[i].Prefix.Addr().Less(bs[j].Prefix.Addr())
			}
			return bs[i].First < bs[j].First
		})
		for _, b := range bs {
			dst.Bindings = append(dst.Bindings, BindingEntry{Prefix: b.Prefix.String(), Ports: b.Ports()})
		}
		out.Destinations = append(out.Destinations, *dst)
	}
	sort.Slice(out.Destinations, func(i, j int) bool {
		a, b := out.Destinations[i], out.Destinations[j]
		if a.Label != b.Label {
			return a.Label < b.Label
		}
		return a.Protocol < b.Protocol
	})
	out.Unmatched = d.counters(0).Lookups
	return out, nil
}

func (d *Dispatcher) counters(id uint32) Counters {
	var per []bpfobj.DispatchDispatchCounters
	var sum Counters
	if d.maps.Counters.Lookup(id, &per) != nil {
		return sum
	}
	for _, c := range per {
		sum.Lookups += c.Lookups
		sum.Hits += c.Hits
		sum.Misses += c.Misses
	}
	return sum
}
