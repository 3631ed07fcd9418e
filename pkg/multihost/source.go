// Package multihost shares the live backends of services between hosts:
// each host publishes its providers that listen, and writes every other
// host's into its own service maps as remote backends (portcullisctl
// sync). Where the backends are shared is a Source: etcd today; a
// Kubernetes EndpointSlice source would implement the same two methods.
package multihost

import (
	"context"
	"slices"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/services"
)

// Backend is one live backend of a service on one host.
type Backend struct {
	Service  string            `json:"service"`
	Node     string            `json:"node"`
	Endpoint services.Endpoint `json:"endpoint"`
}

// Key names a backend uniquely: service/node/endpoint.
func (b Backend) Key() string { return b.Service + "/" + b.Node + "/" + b.Endpoint.String() }

// Declared is one node's declaration of a service: its frontends and
// static backends, as services.d, the CNI conf or service add declared it
// there.
type Declared struct {
	Node string `json:"node"`
	services.Declaration
}

// Key names a declaration uniquely: service/node.
func (d Declared) Key() string { return d.Name + "/" + d.Node }

// Set is what nodes share: live backends and service declarations.
type Set struct {
	Backends []Backend
	Services []Declared
}

// Equal tells whether two sorted sets are the same.
func (s Set) Equal(o Set) bool {
	return slices.Equal(s.Backends, o.Backends) && slices.EqualFunc(s.Services, o.Services, func(a, b Declared) bool {
		return a.Node == b.Node && a.Declaration.Equal(&b.Declaration)
	})
}

// Source is where hosts meet.
type Source interface {
	// Publish keeps the latest set received on local published as this
	// node's until ctx ends, and withdraws it when it ends. If the node
	// dies, the source withdraws it itself (etcd: a lease).
	Publish(ctx context.Context, local <-chan Set) error
	// Watch calls update with the complete set of the other nodes'
	// backends and declarations every time it changes, and again after
	// every reconnect, until ctx ends. update must not block for long.
	Watch(ctx context.Context, update func(Set)) error
}

// offer replaces whatever ch holds with v: a slow reader gets the latest
// set, never a backlog (ch has room for one).
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func sortBackends(list []Backend) {
	slices.SortFunc(list, func(a, b Backend) int { return strings.Compare(a.Key(), b.Key()) })
}

func sortDeclared(list []Declared) {
	slices.SortFunc(list, func(a, b Declared) int { return strings.Compare(a.Key(), b.Key()) })
}
