package services

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// ErrNotFound is returned for a service name that does not exist.
var ErrNotFound = errors.New("no such service")

func (m *Maps) loadNames() error {
	if m.ids != nil {
		return nil
	}
	m.ids, m.names = map[string]uint32{}, map[uint32]string{}
	m.nodeIDs, m.nodeNames = map[string]uint32{}, map[uint32]string{}
	m.adopted = map[uint32]uint32{}
	var (
		key svcName
		id  uint32
	)
	iter := m.nameMap.Iterate()
	for iter.Next(&key, &id) {
		name := cString(key.Name[:])
		if node, ok := strings.CutPrefix(name, nodePrefix); ok {
			m.nodeIDs[node], m.nodeNames[id] = id, node
			continue
		}
		if m.loadAdopted(name, id) {
			continue
		}
		m.ids[name], m.names[id] = id, name
	}
	return iter.Err()
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func nameKey(name string) *svcName {
	var k svcName
	copy(k.Name[:], name)
	return &k
}

// id returns a service's id.
func (m *Maps) id(name string) (uint32, error) {
	if err := m.loadNames(); err != nil {
		return 0, err
	}
	id, ok := m.ids[name]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return id, nil
}

// create allocates an id for a new service.
func (m *Maps) create(name string) (uint32, error) {
	if err := ValidateName(name); err != nil {
		return 0, err
	}
	if err := m.loadNames(); err != nil {
		return 0, err
	}
	for id := uint32(1); id <= maxServiceID; id++ {
		if _, used := m.names[id]; used {
			continue
		}
		if err := put(m.nameMap, "service names", nameKey(name), &id); err != nil {
			return 0, err
		}
		m.ids[name], m.names[id] = id, name
		return id, nil
	}
	return 0, fmt.Errorf("too many services: all %d service ids are in use", maxServiceID)
}

// Put creates a service or replaces its frontends and static backends;
// its provider backends are recomputed from providers (every attachment's
// "provides"). Applying the same declaration twice changes nothing.
func (m *Maps) Put(d Declaration, providers []Provider) error {
	if err := d.Validate(); err != nil {
		return err
	}
	id, err := m.id(d.Name)
	fresh := errors.Is(err, ErrNotFound)
	if fresh {
		id, err = m.create(d.Name)
	}
	if err != nil {
		return err
	}
	var remotes []Remote
	if !fresh {
		svc, err := m.service(id, nil)
		if err != nil {
			return err
		}
		remotes = remotesOf(svc) // a declaration names static backends; sync owns the remote ones
	}
	if err := m.setFrontends(id, d.Name, d.Frontends, fresh); err != nil {
		if fresh {
			m.Delete(d.Name)
		}
		return err
	}
	// Declared here: this host's own from now on, even if another host's
	// declaration created it.
	if err := m.forgetAdopted(id); err != nil {
		return err
	}
	return m.writeSlots(id, m.slotsFor(d.Name, d.Backends, remotes, providers))
}

// Create adds a new service; it fails if the name exists.
func (m *Maps) Create(d Declaration, providers []Provider) error {
	if _, err := m.id(d.Name); err == nil {
		return fmt.Errorf("service %s already exists (service del %s first, or add backends with service backend add)", d.Name, d.Name)
	}
	return m.Put(d, providers)
}

// Delete removes a service: its frontends first, so no connect resolves
// it while its backends go.
func (m *Maps) Delete(name string) error {
	id, err := m.id(name)
	if err != nil {
		return err
	}
	fes, err := m.frontendsOf()
	if err != nil {
		return err
	}
	for _, k := range fes[id] {
		if err := del(m.frontends, &k); err != nil {
			return err
		}
	}
	if err := m.writeSlots(id, nil); err != nil {
		return err
	}
	if err := m.forgetAdopted(id); err != nil {
		return err
	}
	if err := del(m.nameMap, nameKey(name)); err != nil {
		return err
	}
	delete(m.ids, name)
	delete(m.names, id)
	return nil
}

// AddBackend adds a static backend to a service.
func (m *Maps) AddBackend(name string, e Endpoint, providers []Provider) error {
	svc, err := m.Get(name)
	if err != nil {
		return err
	}
	statics := staticsOf(svc)
	for _, s := range statics {
		if s == e {
			return nil
		}
	}
	return m.writeSlots(svc.ID, m.slotsFor(name, append(statics, e), remotesOf(svc), providers))
}

// DelBackend removes a static backend from a service.
func (m *Maps) DelBackend(name string, e Endpoint, providers []Provider) error {
	svc, err := m.Get(name)
	if err != nil {
		return err
	}
	var keep []Endpoint
	found := false
	for _, s := range staticsOf(svc) {
		if s == e {
			found = true
			continue
		}
		keep = append(keep, s)
	}
	if !found {
		return fmt.Errorf("service %s has no static backend %s", name, e)
	}
	return m.writeSlots(svc.ID, m.slotsFor(name, keep, remotesOf(svc), providers))
}

// Sync recomputes the provider backends of the named services (those an
// attachment that came or went provides). Names that are not services are
// skipped: a container may provide a service before it is declared.
func (m *Maps) Sync(names []string, providers []Provider) error {
	for _, name := range names {
		svc, err := m.Get(name)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		if err := m.writeSlots(svc.ID, m.slotsFor(name, staticsOf(svc), remotesOf(svc), providers)); err != nil {
			return err
		}
	}
	return nil
}

func staticsOf(svc *Service) []Endpoint {
	var list []Endpoint
	for _, b := range svc.Backends {
		if b.Kind == "static" {
			list = append(list, *b.Endpoint)
		}
	}
	return list
}

func staticSlot(e Endpoint, node uint32) backendVal {
	return backendVal{CgroupID: uint64(node), Addr: addr16(e.Addr.Addr()), Port: e.Addr.Port(), Kind: kindStatic, Protocol: e.Protocol.Number()}
}

// slotsFor is a service's backend slots: static backends, remote ones
// (static slots that name their node), then its providers in attachment
// order. The nodes of remotes must have ids (nodeID) already.
func (m *Maps) slotsFor(name string, statics []Endpoint, remotes []Remote, providers []Provider) []backendVal {
	var slots []backendVal
	for _, e := range statics {
		slots = append(slots, staticSlot(e, 0))
	}
	for _, r := range remotes {
		slots = append(slots, staticSlot(r.Endpoint, m.nodeIDs[r.Node]))
	}
	var mine []Provider
	for _, p := range providers {
		if p.Service == name {
			mine = append(mine, p)
		}
	}
	sort.Slice(mine, func(i, j int) bool {
		if mine[i].Attachment != mine[j].Attachment {
			return mine[i].Attachment < mine[j].Attachment
		}
		return mine[i].Port < mine[j].Port
	})
	for _, p := range mine {
		slots = append(slots, backendVal{CgroupID: p.CgroupID, Port: p.Port, Kind: kindProvider, Protocol: p.Protocol.Number()})
	}
	return slots
}

// writeSlots makes slots the service's backends. Connects run while it
// does: a shrinking count is lowered first and a growing one raised last,
// so a reader never picks an index that has no slot yet (a slot being
// overwritten reads as either its old or its new backend).
func (m *Maps) writeSlots(id uint32, slots []backendVal) error {
	var old uint32
	if err := m.counts.Lookup(&id, &old); err != nil {
		return fmt.Errorf("read backend count: %w", err)
	}
	n := uint32(len(slots))
	if n < old {
		if err := m.counts.Update(&id, &n, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	for i := range slots {
		key := backendKey{id, uint32(i)}
		if err := put(m.backends, "backends", &key, &slots[i]); err != nil {
			return err
		}
	}
	if n >= old {
		if err := m.counts.Update(&id, &n, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	for i := n; i < old; i++ {
		if err := del(m.backends, &backendKey{id, i}); err != nil {
			return err
		}
	}
	return nil
}

// setFrontends makes fes the service's frontends. A frontend that belongs
// to another service is refused. A fresh service has none yet, which
// spares scanning the frontends map (loading many services stays linear).
func (m *Maps) setFrontends(id uint32, name string, fes []Endpoint, fresh bool) error {
	want := map[frontendKey]bool{}
	for _, e := range fes {
		k := frontendKeyOf(e)
		want[k] = true
		var have frontendVal
		err := m.frontends.Lookup(&k, &have)
		if err == nil && have.ServiceID != id {
			return fmt.Errorf("frontend %s already belongs to service %s", e, m.names[have.ServiceID])
		} else if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	if !fresh {
		all, err := m.frontendsOf()
		if err != nil {
			return err
		}
		for _, k := range all[id] {
			if !want[k] {
				if err := del(m.frontends, &k); err != nil {
					return err
				}
			}
		}
	}
	for _, e := range fes {
		k := frontendKeyOf(e)
		if err := put(m.frontends, "frontends", &k, &frontendVal{id}); err != nil {
			return err
		}
	}
	return nil
}

func frontendKeyOf(e Endpoint) frontendKey {
	return frontendKey{Addr: addr16(e.Addr.Addr()), Port: e.Addr.Port(), Protocol: e.Protocol.Number()}
}

func protocolOf(n uint8) policy.Protocol {
	if n == 17 {
		return policy.UDP
	}
	return policy.TCP
}

// frontendsOf reads the frontends map once, grouped by service id.
func (m *Maps) frontendsOf() (map[uint32][]frontendKey, error) {
	out := map[uint32][]frontendKey{}
	var (
		k frontendKey
		v frontendVal
	)
	iter := m.frontends.Iterate()
	for iter.Next(&k, &v) {
		out[v.ServiceID] = append(out[v.ServiceID], k)
	}
	return out, iter.Err()
}

// Get returns one service with its backends' liveness.
func (m *Maps) Get(name string) (*Service, error) {
	id, err := m.id(name)
	if err != nil {
		return nil, err
	}
	fes, err := m.frontendsOf()
	if err != nil {
		return nil, err
	}
	return m.service(id, fes[id])
}

// List returns every service, sorted by name.
func (m *Maps) List() ([]Service, error) {
	if err := m.loadNames(); err != nil {
		return nil, err
	}
	fes, err := m.frontendsOf()
	if err != nil {
		return nil, err
	}
	list := []Service{}
	for id := range m.names {
		svc, err := m.service(id, fes[id])
		if err != nil {
			return nil, err
		}
		list = append(list, *svc)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

func (m *Maps) service(id uint32, keys []frontendKey) (*Service, error) {
	svc := &Service{Name: m.names[id], ID: id, Frontends: []Endpoint{}, Backends: []Backend{}}
	if node, ok := m.adopted[id]; ok {
		svc.DeclaredBy = m.nodeNames[node]
	}
	for _, k := range keys {
		svc.Frontends = append(svc.Frontends, Endpoint{netip.AddrPortFrom(fromAddr16(k.Addr), k.Port), protocolOf(k.Protocol)})
	}
	sort.Slice(svc.Frontends, func(i, j int) bool { return svc.Frontends[i].String() < svc.Frontends[j].String() })
	var count uint32
	if err := m.counts.Lookup(&id, &count); err != nil {
		return nil, err
	}
	for i := uint32(0); i < count; i++ {
		var b backendVal
		if err := m.backends.Lookup(&backendKey{id, i}, &b); err != nil {
			return nil, fmt.Errorf("service %s: backend slot %d: %w", svc.Name, i, err)
		}
		svc.Backends = append(svc.Backends, m.backend(&b))
	}
	return svc, nil
}

// backend describes a slot the way the connect program sees it.
func (m *Maps) backend(b *backendVal) Backend {
	proto := protocolOf(b.Protocol)
	if b.Kind == kindStatic {
		e := Endpoint{netip.AddrPortFrom(fromAddr16(b.Addr), b.Port), proto}
		if b.CgroupID != 0 {
			node := m.nodeNames[uint32(b.CgroupID)]
			return Backend{Kind: "remote", Endpoint: &e, Node: node, Protocol: proto, Live: true}
		}
		return Backend{Kind: "static", Endpoint: &e, Protocol: proto, Live: true}
	}
	out := Backend{Kind: "provider", CgroupID: b.CgroupID, Port: b.Port, Protocol: proto}
	for _, family := range []uint8{4, 6} {
		var l listenerVal
		if m.listeners.Lookup(&listenerKey{CgroupID: b.CgroupID, Port: b.Port, Protocol: b.Protocol, Family: family}, &l) == nil {
			e := Endpoint{netip.AddrPortFrom(fromAddr16(l.Addr), b.Port), proto}
			out.Endpoint, out.Live = &e, true
			break
		}
	}
	return out
}
