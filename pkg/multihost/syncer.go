package multihost

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

// Syncer runs one host's side: it polls the local port registry and
// service declarations and publishes what changed, and writes the other
// hosts' backends (and the services only they declare) into the local
// service maps.
//
// Polling, not events: portcullis has no daemon, the registry is a map
// the kernel's post_bind and sock_release programs keep, and reading it
// is one map walk of the bound sockets (not of the services), so every
// Interval (200 ms) it is read and diffed against what was published.
// Declarations change rarely and reading them walks every service, so
// they are read every DeclInterval (1 s).
type Syncer struct {
	StateDir string
	Node     string
	Source   Source
	// Interval is how often the local registry is read.
	Interval time.Duration
	// DeclInterval is how often the local declarations are read
	// (Interval when shorter; 1 s when zero).
	DeclInterval time.Duration
	// Reconcile is how often the remote backends are written again even
	// without a change (services declared or re-created since).
	Reconcile time.Duration
	Log       *log.Logger

	// applied is what the last apply wrote, by service: an update
	// touches only the services whose remote set changed. nil: unknown.
	applied map[string][]services.Remote
	// declared is the remote declarations the last apply reconciled;
	// nil: unknown (the next apply reads every service).
	declared []Declared
	// conflicts is the last conflict logged per service, so that a
	// conflict is logged once, not at every apply.
	conflicts map[string]string
}

// Run syncs until ctx ends.
func (y *Syncer) Run(ctx context.Context) error {
	if err := services.ValidateNode(y.Node); err != nil {
		return fmt.Errorf("--node: %w", err)
	}
	if y.DeclInterval == 0 {
		y.DeclInterval = time.Second
	}
	local := make(chan Set, 1)
	remote := make(chan Set, 1)
	done := make(chan error, 2)
	go func() { done <- y.Source.Publish(ctx, local) }()
	go func() { done <- y.Source.Watch(ctx, func(set Set) { offer(remote, set) }) }()

	poll := time.NewTicker(y.Interval)
	defer poll.Stop()
	reconcile := time.NewTicker(y.Reconcile)
	defer reconcile.Stop()
	var (
		published Set
		first     = true
		declRead  time.Time // when the local declarations were last read
		have      *Set      // the latest remote set; nil before the first read
	)
	for {
		select {
		case <-ctx.Done():
			<-done
			<-done
			return nil
		case <-poll.C:
			list, err := y.Local()
			if err != nil {
				y.Log.Printf("read local backends: %v", err)
				continue
			}
			next := Set{Backends: list, Services: published.Services}
			if first || time.Since(declRead) >= y.DeclInterval {
				decls, err := y.Declarations()
				if err != nil {
					y.Log.Printf("read local declarations: %v", err)
					continue
				}
				next.Services, declRead = decls, time.Now()
			}
			if first || !next.Equal(published) {
				first, published = false, next
				offer(local, next)
			}
		case set := <-remote:
			have = &set
			if err := y.apply(set, false); err != nil {
				y.Log.Printf("write remote backends: %v", err)
			}
		case <-reconcile.C:
			if have != nil {
				if err := y.apply(*have, true); err != nil {
					y.Log.Printf("write remote backends: %v", err)
				}
			}
		}
	}
}

// Declarations lists the services this host declares itself (not those
// it adopted from another host's declaration), as it declares them.
func (y *Syncer) Declarations() ([]Declared, error) {
	s, err := state.Open(y.StateDir, false)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	m, err := s.Services()
	if err != nil {
		return nil, err
	}
	defer m.Close()
	all, err := m.List()
	if err != nil {
		return nil, err
	}
	list := []Declared{}
	for i := range all {
		if all[i].DeclaredBy == "" {
			list = append(list, Declared{Node: y.Node, Declaration: services.DeclarationOf(&all[i])})
		}
	}
	sortDeclared(list)
	return list, nil
}

// Local lists this host's live provider backends: every socket an
// attachment providing a service has bound to the provided port. A socket
// bound to a wildcard address stands for the attachment's own addresses;
// loopback and wildcards without addresses are not reachable from another
// host and are not published.
func (y *Syncer) Local() ([]Backend, error) {
	s, err := state.Open(y.StateDir, false)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	attachments, err := s.Attachments()
	if err != nil {
		return nil, err
	}
	m, err := s.Services()
	if err != nil {
		return nil, err
	}
	defer m.Close()
	bound, err := m.Registry()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	list := []Backend{}
	for i := range attachments {
		a := &attachments[i]
		for _, p := range services.ProvidersOf(a.ID, a.CgroupID, &a.Policy) {
			for _, l := range bound {
				if l.CgroupID != a.CgroupID || l.Address.Port() != p.Port || l.Protocol != p.Protocol {
					continue
				}
				addrs := []netip.Addr{l.Address.Addr()}
				if l.Address.Addr().IsUnspecified() {
					addrs = a.Policy.Addresses
				}
				for _, addr := range addrs {
					if addr.IsLoopback() || addr.IsUnspecified() {
						continue
					}
					b := Backend{Service: p.Service, Node: y.Node, Endpoint: services.Endpoint{Addr: netip.AddrPortFrom(addr.Unmap(), p.Port), Protocol: p.Protocol}}
					if !seen[b.Key()] {
						seen[b.Key()] = true
						list = append(list, b)
					}
				}
			}
		}
	}
	sortBackends(list)
	return list, nil
}

// apply makes the local maps follow the other hosts' set: services only
// other hosts declare are adopted (created from the declaration) and
// deleted when no host declares them any more; the remote backends of
// every local service are exactly those of set (a backend of a service
// that neither this host nor another declares waits until one does); the
// local clients of the backends it removed are terminated. Unless full,
// only the services whose declarations or backends differ from the last
// apply are read and written: with thousands of services one change
// costs one service (a burst of changes, such as a host that publishes
// its thousand declarations, costs one pass).
func (y *Syncer) apply(set Set, full bool) error {
	byService := map[string][]services.Remote{}
	for _, b := range set.Backends {
		if b.Node != y.Node {
			byService[b.Service] = append(byService[b.Service], services.Remote{Node: b.Node, Endpoint: b.Endpoint})
		}
	}
	full = full || y.applied == nil || y.declared == nil
	byName := groupDeclared(set.Services)
	var declNames, names []string // services to look at unless full
	if !full {
		prev := groupDeclared(y.declared)
		for name, list := range byName {
			if !equalDeclared(list, prev[name]) {
				declNames = append(declNames, name)
			}
		}
		for name := range prev {
			if _, ok := byName[name]; !ok {
				declNames = append(declNames, name)
			}
		}
		seen := map[string]bool{}
		for _, name := range declNames {
			seen[name] = true
		}
		names = append(names, declNames...)
		for name, want := range byService {
			if !seen[name] && !slices.Equal(want, y.applied[name]) {
				seen[name] = true
				names = append(names, name)
			}
		}
		for name := range y.applied {
			if _, ok := byService[name]; !ok && !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			return nil
		}
	}
	s, err := state.Open(y.StateDir, true)
	if err != nil {
		return err
	}
	defer s.Close()
	var removed []terminate.Target
	err = s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		// The services to look at, as they are now (nil: not here).
		var local map[string]*services.Service
		if full {
			all, err := m.List()
			if err != nil {
				return err
			}
			local = map[string]*services.Service{}
			for i := range all {
				local[all[i].Name] = &all[i]
			}
		} else {
			var err error
			if local, err = m.GetMany(names); err != nil {
				return err
			}
		}
		if full {
			seen := map[string]bool{}
			for name := range byName {
				seen[name] = true
				declNames = append(declNames, name)
			}
			for name, svc := range local {
				if svc.DeclaredBy != "" && !seen[name] {
					declNames = append(declNames, name)
				}
			}
		}
		sort.Strings(declNames)
		for _, name := range declNames {
			gone, err := y.adopt(m, name, byName[name], local, providers)
			if err != nil {
				return err
			}
			removed = append(removed, gone...)
		}
		if full {
			names = names[:0]
			for name := range local {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			svc := local[name]
			if svc == nil {
				continue // not declared anywhere (yet): the apply of its declaration adds its backends
			}
			want := byService[svc.Name]
			old := services.RemotesOf(svc)
			changed, err := m.SetRemotes(svc, want, providers)
			if err != nil {
				return fmt.Errorf("service %s: %w", svc.Name, err)
			}
			if !changed {
				continue
			}
			for _, r := range want {
				if !slices.Contains(old, r) {
					y.Log.Printf("service %s: added remote backend %s (node %s)", svc.Name, r.Endpoint, r.Node)
				}
			}
			for _, r := range old {
				if !slices.Contains(want, r) {
					y.Log.Printf("service %s: removed remote backend %s (node %s)", svc.Name, r.Endpoint, r.Node)
					removed = append(removed, target(r.Endpoint))
				}
			}
		}
		if len(removed) == 0 {
			return nil
		}
		report, err := terminate.Removed(s, m, removed)
		if err != nil {
			y.Log.Printf("warning: terminate clients of removed backends: %v", err)
			return nil
		}
		if report.Destroyed > 0 {
			y.Log.Printf("terminated %d local client sockets of removed remote backends", report.Destroyed)
		}
		return nil
	})
	if err != nil {
		y.applied, y.declared = nil, nil // unknown: the next apply is full
		return err
	}
	y.applied, y.declared = byService, set.Services
	return nil
}

func target(e services.Endpoint) terminate.Target {
	return terminate.Target{Addr: e.Addr.Addr(), Port: e.Addr.Port(), Protocol: string(e.Protocol)}
}

// groupDeclared groups declarations by service, each list sorted by node
// (list is sorted by name/node).
func groupDeclared(list []Declared) map[string][]Declared {
	out := map[string][]Declared{}
	for _, d := range list {
		out[d.Name] = append(out[d.Name], d)
	}
	return out
}

func equalDeclared(a, b []Declared) bool {
	return slices.EqualFunc(a, b, func(x, y Declared) bool { return x.Node == y.Node && x.Declaration.Equal(&y.Declaration) })
}

// adopt reconciles one service with what other hosts declare of it (list,
// sorted by node); local holds the service as it is here (absent: not
// here) and is updated.
//
// The conflict rule: a service declared on this host keeps this host's
// declaration (a different one elsewhere is logged); a service declared
// only elsewhere gets the declaration of the node whose name sorts first
// (every host picks the same one, and it does not change when another
// host joins, restarts or is cut off and comes back unless that host's
// name sorts first); other nodes' different declarations are logged. A
// frontend that belongs to another local service keeps the declaration
// from being adopted (logged).
//
// An adopted service that no host declares any more is deleted; its
// remote and static backends are returned so that their clients are
// terminated.
func (y *Syncer) adopt(m *services.Maps, name string, list []Declared, local map[string]*services.Service, providers []services.Provider) ([]terminate.Target, error) {
	if y.conflicts == nil {
		y.conflicts = map[string]string{}
	}
	conflict := func(msg string) {
		if y.conflicts[name] != msg {
			y.conflicts[name] = msg
			if msg != "" {
				y.Log.Printf("service %s: conflict: %s", name, msg)
			}
		}
	}
	svc := local[name]
	if len(list) == 0 {
		delete(y.conflicts, name)
		if svc == nil || svc.DeclaredBy == "" {
			return nil, nil
		}
		if err := m.Delete(name); err != nil {
			return nil, fmt.Errorf("service %s: %w", name, err)
		}
		delete(local, name)
		y.Log.Printf("service %s: withdrawn (node %s no longer declares it, nor does any other)", name, svc.DeclaredBy)
		var gone []terminate.Target
		for _, b := range svc.Backends {
			if b.Kind != "provider" && b.Endpoint != nil {
				gone = append(gone, target(*b.Endpoint))
			}
		}
		return gone, nil
	}
	if svc != nil && svc.DeclaredBy == "" {
		mine := services.DeclarationOf(svc)
		var differ []string
		for _, d := range list {
			if !d.Declaration.Equal(&mine) {
				differ = append(differ, fmt.Sprintf("node %s declares %s", d.Node, d.Declaration))
			}
		}
		msg := ""
		if len(differ) > 0 {
			msg = fmt.Sprintf("this host declares %s, %s; this host's own declaration applies here", mine, strings.Join(differ, ", "))
		}
		conflict(msg)
		return nil, nil
	}
	win := list[0]
	var differ []string
	for _, d := range list[1:] {
		if !d.Declaration.Equal(&win.Declaration) {
			differ = append(differ, fmt.Sprintf("node %s declares %s", d.Node, d.Declaration))
		}
	}
	msg := ""
	if len(differ) > 0 {
		msg = fmt.Sprintf("node %s declares %s, %s; node %s's applies (the first node name)", win.Node, win.Declaration, strings.Join(differ, ", "), win.Node)
	}
	if svc != nil && svc.DeclaredBy == win.Node {
		if have := services.DeclarationOf(svc); have.Equal(&win.Declaration) {
			conflict(msg)
			return nil, nil
		}
	}
	if err := m.Adopt(win.Declaration, win.Node, providers); err != nil {
		conflict(fmt.Sprintf("the declaration of node %s (%s) is not applied: %v", win.Node, win.Declaration, err))
		return nil, nil
	}
	conflict(msg)
	y.Log.Printf("service %s: declared by node %s: %s", name, win.Node, win.Declaration)
	var gone []terminate.Target
	if svc != nil {
		// Static backends the new declaration no longer has.
		for _, e := range services.DeclarationOf(svc).Backends {
			if !slices.Contains(win.Declaration.Backends, e) {
				gone = append(gone, target(e))
			}
		}
	}
	now, err := m.Slots(name) // its frontends are not needed any more
	if err != nil {
		return gone, err
	}
	local[name] = now
	return gone, nil
}
