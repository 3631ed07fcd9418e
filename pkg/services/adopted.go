package services

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Adopted services are declared by another host: portcullisctl sync
// creates them from that host's declaration (frontends and static
// backends) so that this host's clients can reach the service's remote
// backends, and deletes them when no host declares them any more. A
// service declared here (services.d, the CNI conf, service add) is never
// adopted: this host's own declaration wins, and declaring an adopted
// service here makes it this host's.
//
// Which services are adopted is kept next to the names, in svc_names, as
// "decl:ID" -> the node id of the host whose declaration is applied (a
// service name cannot hold ':', and the kernel never reads svc_names).

const adoptedPrefix = "decl:"

// ErrDeclaredHere is returned by Adopt for a service this host declares
// itself.
var ErrDeclaredHere = errors.New("declared on this host")

func adoptedKey(id uint32) *svcName {
	return nameKey(adoptedPrefix + strconv.FormatUint(uint64(id), 10))
}

// loadAdopted records a "decl:ID" entry read from svc_names.
func (m *Maps) loadAdopted(name string, node uint32) bool {
	s, ok := strings.CutPrefix(name, adoptedPrefix)
	if !ok {
		return false
	}
	if id, err := strconv.ParseUint(s, 10, 32); err == nil {
		m.adopted[uint32(id)] = node
	}
	return true
}

// forgetAdopted makes a service this host's own (a local declaration) or
// removes the mark of a deleted one.
func (m *Maps) forgetAdopted(id uint32) error {
	if _, ok := m.adopted[id]; !ok {
		return nil
	}
	if err := del(m.nameMap, adoptedKey(id)); err != nil {
		return err
	}
	delete(m.adopted, id)
	return nil
}

// Adopt creates or updates a service from another node's declaration,
// keeping its remote and provider backends. A service this host declares
// itself is left alone (ErrDeclaredHere).
func (m *Maps) Adopt(d Declaration, node string, providers []Provider) error {
	if err := d.Validate(); err != nil {
		return err
	}
	nid, err := m.nodeID(node)
	if err != nil {
		return err
	}
	id, err := m.id(d.Name)
	fresh := errors.Is(err, ErrNotFound)
	if err != nil && !fresh {
		return err
	}
	if !fresh {
		if _, ok := m.adopted[id]; !ok {
			return ErrDeclaredHere
		}
	}
	if fresh {
		if id, err = m.create(d.Name); err != nil {
			return err
		}
	}
	// Marked first: nothing reads a half-made adopted service as declared
	// here.
	if nid0, ok := m.adopted[id]; !ok || nid0 != nid {
		if err := put(m.nameMap, "service names", adoptedKey(id), &nid); err != nil {
			if fresh {
				m.Delete(d.Name)
			}
			return err
		}
		m.adopted[id] = nid
	}
	var remotes []Remote
	if !fresh {
		svc, err := m.service(id, nil)
		if err != nil {
			return err
		}
		remotes = remotesOf(svc)
	}
	if err := m.setFrontends(id, d.Name, d.Frontends, fresh); err != nil {
		if fresh {
			m.Delete(d.Name)
		}
		return err
	}
	return m.writeSlots(id, m.slotsFor(d.Name, d.Backends, remotes, providers))
}

// DeclarationOf is what a service declares: its frontends and static
// backends, sorted.
func DeclarationOf(svc *Service) Declaration {
	d := Declaration{Name: svc.Name, Frontends: slices.Clone(svc.Frontends), Backends: staticsOf(svc)}
	d.Normalize()
	return d
}

// Normalize sorts the frontends and backends, so that equal declarations
// compare equal.
func (d *Declaration) Normalize() {
	cmp := func(a, b Endpoint) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(d.Frontends, cmp)
	slices.SortFunc(d.Backends, cmp)
}

// Equal tells whether two normalized declarations declare the same.
func (d *Declaration) Equal(o *Declaration) bool {
	return d.Name == o.Name && slices.Equal(d.Frontends, o.Frontends) && slices.Equal(d.Backends, o.Backends)
}

func (d Declaration) String() string {
	var fe, be []string
	for _, e := range d.Frontends {
		fe = append(fe, e.String())
	}
	for _, e := range d.Backends {
		be = append(be, e.String())
	}
	s := fmt.Sprintf("frontends %s", strings.Join(fe, ","))
	if len(be) > 0 {
		s += fmt.Sprintf(" backends %s", strings.Join(be, ","))
	}
	return s
}

// GetMany returns those of the named services that exist, reading the
// frontends map once (Get reads it for every service).
func (m *Maps) GetMany(names []string) (map[string]*Service, error) {
	if err := m.loadNames(); err != nil {
		return nil, err
	}
	fes, err := m.frontendsOf()
	if err != nil {
		return nil, err
	}
	out := map[string]*Service{}
	for _, name := range names {
		id, ok := m.ids[name]
		if !ok {
			continue
		}
		svc, err := m.service(id, fes[id])
		if err != nil {
			return nil, err
		}
		out[name] = svc
	}
	return out, nil
}

// Slots returns a service with its backends and without its frontends
// (no walk of the frontends map): enough for SetRemotes.
func (m *Maps) Slots(name string) (*Service, error) {
	id, err := m.id(name)
	if err != nil {
		return nil, err
	}
	return m.service(id, nil)
}
