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

// Source is where hosts meet.
type Source interface {
	// Publish keeps the latest set received on local published as this
	// node's backends until ctx ends, and withdraws them when it ends.
	// If the node dies, the source withdraws them itself (etcd: a lease).
	Publish(ctx context.Context, local <-chan []Backend) error
	// Watch calls update with the complete set of the other nodes'
	// backends every time it changes, and again after every reconnect,
	// until ctx ends. update must not block for long.
	Watch(ctx context.Context, update func([]Backend)) error
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
