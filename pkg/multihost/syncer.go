package multihost

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"slices"
	"time"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

// Syncer runs one host's side: it polls the local port registry and
// publishes what changed, and writes the other hosts' backends into the
// local service maps.
//
// Polling, not events: portcullis has no daemon, the registry is a map
// the kernel's post_bind and sock_release programs keep, and reading it
// is one map walk of the bound sockets (not of the services), so every
// Interval (200 ms) it is read and diffed against what was published.
type Syncer struct {
	StateDir string
	Node     string
	Source   Source
	// Interval is how often the local registry is read.
	Interval time.Duration
	// Reconcile is how often the remote backends are written again even
	// without a change (services declared or re-created since).
	Reconcile time.Duration
	Log       *log.Logger

	// applied is what the last apply wrote, by service: an update
	// touches only the services whose remote set changed. nil: unknown.
	applied map[string][]services.Remote
}

// Run syncs until ctx ends.
func (y *Syncer) Run(ctx context.Context) error {
	if err := services.ValidateNode(y.Node); err != nil {
		return fmt.Errorf("--node: %w", err)
	}
	local := make(chan []Backend, 1)
	remote := make(chan []Backend, 1)
	done := make(chan error, 2)
	go func() { done <- y.Source.Publish(ctx, local) }()
	go func() { done <- y.Source.Watch(ctx, func(list []Backend) { offer(remote, list) }) }()

	poll := time.NewTicker(y.Interval)
	defer poll.Stop()
	reconcile := time.NewTicker(y.Reconcile)
	defer reconcile.Stop()
	var (
		published []Backend
		first     = true
		have      []Backend // the latest remote set; nil before the first read
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
			if first || !slices.Equal(list, published) {
				first, published = false, list
				offer(local, list)
			}
		case have = <-remote:
			if err := y.apply(have, false); err != nil {
				y.Log.Printf("write remote backends: %v", err)
			}
		case <-reconcile.C:
			if have != nil {
				if err := y.apply(have, true); err != nil {
					y.Log.Printf("write remote backends: %v", err)
				}
			}
		}
	}
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

// apply makes the remote backends of every local service exactly those of
// list (a backend of a service this host does not have waits until it
// has it), and terminates the local clients of the backends it removed.
// Unless full, only the services whose set differs from the last apply
// are read and written: with thousands of services one change costs one
// service.
func (y *Syncer) apply(list []Backend, full bool) error {
	byService := map[string][]services.Remote{}
	for _, b := range list {
		if b.Node != y.Node {
			byService[b.Service] = append(byService[b.Service], services.Remote{Node: b.Node, Endpoint: b.Endpoint})
		}
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
	err = s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		var all []services.Service
		if names == nil {
			if all, err = m.List(); err != nil {
				return err
			}
		}
		for _, name := range names {
			svc, err := m.Get(name)
			if errors.Is(err, services.ErrNotFound) {
				continue // not declared here (yet): the periodic full apply adds it
			} else if err != nil {
				return err
			}
			all = append(all, *svc)
		}
		var removed []terminate.Target
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
					e := r.Endpoint
					removed = append(removed, terminate.Target{Addr: e.Addr.Addr(), Port: e.Addr.Port(), Protocol: string(e.Protocol)})
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
		y.applied = nil // unknown: the next apply is full
		return err
	}
	y.applied = byService
	return nil
}
