package services

import (
	"net/netip"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Listener is one listening TCP or bound UDP socket of an attached
// container, as the sockops listen callback or post_bind recorded it.
type Listener struct {
	Cookie   uint64          `json:"cookie"`
	CgroupID uint64          `json:"cgroupId"`
	Protocol policy.Protocol `json:"protocol"`
	Address  netip.AddrPort  `json:"address"`
	BoundAt  time.Time       `json:"boundAt"`
}

// Registry lists the registered sockets, sorted by cgroup, protocol and port.
func (m *Maps) Registry() ([]Listener, error) {
	// bound_ns is CLOCK_BOOTTIME; wall time is now minus its age.
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return nil, err
	}
	nowBoot, now := uint64(ts.Nano()), time.Now()
	list := []Listener{}
	var (
		cookie uint64
		r      registration
	)
	iter := m.registry.Iterate()
	for iter.Next(&cookie, &r) {
		list = append(list, Listener{
			Cookie:   cookie,
			CgroupID: r.CgroupID,
			Protocol: protocolOf(r.Protocol),
			Address:  netip.AddrPortFrom(fromAddr16(r.Addr), r.Port),
			BoundAt:  now.Add(-time.Duration(nowBoot - r.BoundNs)).Truncate(time.Second),
		})
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if a.CgroupID != b.CgroupID {
			return a.CgroupID < b.CgroupID
		}
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		if a.Address.Port() != b.Address.Port() {
			return a.Address.Port() < b.Address.Port()
		}
		return a.Cookie < b.Cookie
	})
	return list, iter.Err()
}

// Drops reports how many registry and reverse-translation updates the
// kernel could not make because a map was full, by map.
func (m *Maps) Drops() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, name := range []string{mapRegistry, mapListeners, "svc_peers"} {
		var n uint64
		key := uint32(i)
		if err := m.drops.Lookup(&key, &n); err != nil {
			return nil, err
		}
		if n > 0 {
			out[name] = n
		}
	}
	return out, nil
}

// ForgetCgroup removes a cgroup's registry entries and listener index:
// once its attachment is gone, sock_release no longer runs for its
// sockets, so the control plane cleans up.
func (m *Maps) ForgetCgroup(cgroupID uint64) error {
	var (
		cookie  uint64
		r       registration
		cookies []uint64
	)
	iter := m.registry.Iterate()
	for iter.Next(&cookie, &r) {
		if r.CgroupID == cgroupID {
			cookies = append(cookies, cookie)
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	for _, c := range cookies {
		if err := del(m.registry, &c); err != nil {
			return err
		}
	}
	var (
		lk   listenerKey
		lv   listenerVal
		keys []listenerKey
	)
	liter := m.listeners.Iterate()
	for liter.Next(&lk, &lv) {
		if lk.CgroupID == cgroupID {
			keys = append(keys, lk)
		}
	}
	if err := liter.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := del(m.listeners, &k); err != nil {
			return err
		}
	}
	return nil
}
