package multihost

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"slices"
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
// declarations are looked at only when they changed, and backends only
// of the services whose set differs from the last apply: with thousands
// of services one change costs one service.
func (y *Syncer) apply(set Set, full bool) error {
	byService := map[string][]services.Remote{}
	for _, b := range set.Backends {
		if b.Node != y.Node {
			byService[b.Service] = append(byService[b.Service], services.Remote{Node: b.Node, Endpoint: b.Endpoint})
		}
	}
	declsChanged := full || y.declared == nil || !(Set{Services: set.Services}).Equal(Set{Services: y.declared})
	if declsChanged {
		full = true // adopted services need their remote backends
	}
	var names []string // services to look at; nil with full
	if !full && y.applied != nil {
		for name, want := range byService {
			if !slices.Equal(want, y.applied[name]) {
				names = append(names, name)
			}
		}
		for name := range y.applied {
			if _, ok := byService[name]; !ok {
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
		if declsChanged {
			gone, err := y.adopt(m, set.Services, providers)
			if err != nil {
				return err
			}
			removed = append(removed, gone...)
		}
		var all []services.Service
		if names == nil {
			if all, err = m.List(); err != nil {
				return err
			}
		}
		for _, name := range names {
			svc, err := m.Get(name)
			if errors.Is(err, services.ErrNotFound) {
				continue // not declared anywhere (yet): the full apply after its declaration adds it
			} else if err != nil {
				return err
			}
			all = append(all, *svc)
		}
		for i := range all {
			svc := &all[i]
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

// adopt reconciles the services other hosts declare with the local ones.
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
// Adopted services that no host declares any more are deleted; their
// remote and static backends are returned so that their clients are
// terminated.
func (y *Syncer) adopt(m *services.Maps, decls []Declared, providers []services.Provider) ([]terminate.Target, error) {
	if y.conflicts == nil {
		y.conflicts = map[string]string{}
	}
	byName := map[string][]Declared{} // sorted by node: decls is sorted by name/node
	for _, d := range decls {
		byName[d.Name] = append(byName[d.Name], d)
	}
	all, err := m.List()
	if err != nil {
		return nil, err
	}
	local := map[string]*services.Service{}
	for i := range all {
		local[all[i].Name] = &all[i]
	}
	conflict := func(name, msg string) {
		if y.conflicts[name] != msg {
			y.conflicts[name] = msg
			if msg != "" {
				y.Log.Printf("service %s: conflict: %s", name, msg)
			}
		}
	}
	var gone []terminate.Target
	for name, list := range byName {
		svc := local[name]
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
			conflict(name, msg)
			continue
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
				conflict(name, msg)
				continue
			}
		}
		if err := m.Adopt(win.Declaration, win.Node, providers); err != nil {
			conflict(name, fmt.Sprintf("the declaration of node %s (%s) is not applied: %v", win.Node, win.Declaration, err))
			continue
		}
		conflict(name, msg)
		y.Log.Printf("service %s: declared by node %s: %s", name, win.Node, win.Declaration)
		if svc != nil {
			// Static backends the new declaration no longer has.
			for _, e := range services.DeclarationOf(svc).Backends {
				if !slices.Contains(win.Declaration.Backends, e) {
					gone = append(gone, target(e))
				}
			}
		}
	}
	for name, svc := range local {
		if svc.DeclaredBy == "" || len(byName[name]) > 0 {
			continue
		}
		if err := m.Delete(name); err != nil {
			return gone, fmt.Errorf("service %s: %w", name, err)
		}
		delete(y.conflicts, name)
		y.Log.Printf("service %s: withdrawn (node %s no longer declares it, nor does any other)", name, svc.DeclaredBy)
		for _, b := range svc.Backends {
			if b.Kind != "provider" && b.Endpoint != nil {
				gone = append(gone, target(*b.Endpoint))
			}
		}
	}
	return gone, nil
}
