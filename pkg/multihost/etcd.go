package multihost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/portcullis-net/portcullis/pkg/services"
)

// Etcd shares backends under PREFIX/backends/SERVICE/NODE/ENDPOINT and
// declarations under PREFIX/services/SERVICE/NODE, each key held by the
// node's lease: a node that stops renewing it (killed, partitioned) loses
// its keys when the TTL runs out, and every watcher sees them deleted.
// Other keys under PREFIX are not read.
type Etcd struct {
	client *clientv3.Client
	prefix string
	node   string
	ttl    time.Duration
	log    *log.Logger
	// resync tells Watch that this node lost its lease: it was cut off
	// from etcd for at least the TTL (partitioned, or every member down).
	// A watch resumed by the client after such a gap could deliver the
	// events it missed, but one whose revision was compacted meanwhile
	// cannot, so Watch starts over with a full read.
	resync chan struct{}
}

// retryEvery is how long a failed etcd call waits before it is retried.
const retryEvery = 500 * time.Millisecond

// NewEtcd connects (lazily: a down cluster is retried, not an error) to
// the endpoints.
func NewEtcd(endpoints []string, prefix, node string, ttl time.Duration, logger *log.Logger) (*Etcd, error) {
	if ttl < 2*time.Second {
		return nil, fmt.Errorf("--ttl %s: must be at least 2s (etcd leases count in seconds)", ttl)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		// gRPC backs off reconnects up to 120 s by default: a host cut
		// off for a minute would resync long after the partition healed.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
		Logger: zap.NewNop(), // we log what we do ourselves
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	return &Etcd{client: c, prefix: strings.TrimRight(prefix, "/") + "/", node: node, ttl: ttl, log: logger, resync: make(chan struct{}, 1)}, nil
}

// Close closes the client.
func (e *Etcd) Close() error { return e.client.Close() }

func (e *Etcd) key(b Backend) string { return e.prefix + "backends/" + b.Key() }

func (e *Etcd) serviceKey(d Declared) string { return e.prefix + "services/" + d.Key() }

// Publish implements Source.
func (e *Etcd) Publish(ctx context.Context, local <-chan Set) error {
	var (
		want      = map[string]string{} // key -> value this node should have
		published map[string]string     // what etcd holds under our lease
		lease     clientv3.LeaseID
		alive     <-chan *clientv3.LeaseKeepAliveResponse
		retry     <-chan time.Time
	)
	for {
		if lease == 0 {
			if id, ka, err := e.grant(ctx); err != nil {
				e.log.Printf("etcd: lease: %v (retrying)", err)
			} else {
				lease, alive, published = id, ka, map[string]string{}
				e.log.Printf("etcd: lease %x granted (ttl %s)", lease, e.ttl)
			}
		}
		retry = nil
		if lease != 0 {
			if err := e.reconcile(ctx, lease, want, published); errors.Is(err, rpctypes.ErrLeaseNotFound) {
				e.log.Printf("etcd: lease %x expired; republishing under a new one", lease)
				lease, alive, retry = 0, nil, time.After(0)
				offer(e.resync, struct{}{})
			} else if err != nil {
				e.log.Printf("etcd: publish: %v (retrying)", err)
				retry = time.After(retryEvery)
			}
		} else {
			retry = time.After(retryEvery)
		}
		select {
		case <-ctx.Done():
			if lease != 0 {
				// Withdraw at once instead of after the TTL.
				rctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := e.client.Revoke(rctx, lease)
				cancel()
				if err == nil {
					e.log.Printf("etcd: lease %x revoked, backends withdrawn", lease)
				}
			}
			return nil
		case set := <-local:
			want = map[string]string{}
			for _, b := range set.Backends {
				v, _ := json.Marshal(b)
				want[e.key(b)] = string(v)
			}
			for _, d := range set.Services {
				v, _ := json.Marshal(d)
				want[e.serviceKey(d)] = string(v)
			}
		case _, ok := <-alive:
			if !ok {
				e.log.Printf("etcd: lease %x lost (no renewal within the ttl); republishing under a new one", lease)
				go e.revokeStale(ctx, lease)
				lease, alive = 0, nil
				offer(e.resync, struct{}{})
			}
		case <-retry:
		}
	}
}

// revokeStale revokes a lease whose keepalives stopped. The client gives
// a lease up when no renewal came back within its TTL, but the cluster
// may still hold it: a newly elected leader extends every lease, so the
// keys under it (a backend that has stopped listening meanwhile) would
// outlive the TTL by an election and a TTL more, while this node
// republishes only what is live under a new lease. Tried until the
// cluster answers, for two TTLs at most (by then it has expired anyway).
func (e *Etcd) revokeStale(ctx context.Context, lease clientv3.LeaseID) {
	deadline := time.Now().Add(2 * e.ttl)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := e.client.Revoke(rctx, lease)
		cancel()
		if err == nil {
			e.log.Printf("etcd: stale lease %x revoked", lease)
			return
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return
		}
		sleep(ctx, retryEvery)
	}
}

func (e *Etcd) grant(ctx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	l, err := e.client.Grant(gctx, int64(e.ttl/time.Second))
	if err != nil {
		return 0, nil, err
	}
	ka, err := e.client.KeepAlive(ctx, l.ID)
	if err != nil {
		return 0, nil, err
	}
	return l.ID, ka, nil
}

// reconcile makes etcd hold want under lease, given that it holds
// published; published is updated as calls succeed.
func (e *Etcd) reconcile(ctx context.Context, lease clientv3.LeaseID, want, published map[string]string) error {
	for k, v := range want {
		if published[k] == v {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := e.client.Put(cctx, k, v, clientv3.WithLease(lease))
		cancel()
		if err != nil {
			return err
		}
		published[k] = v
		e.log.Printf("etcd: published %s", strings.TrimPrefix(k, e.prefix))
	}
	for k := range published {
		if _, ok := want[k]; ok {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := e.client.Delete(cctx, k)
		cancel()
		if err != nil {
			return err
		}
		delete(published, k)
		e.log.Printf("etcd: withdrew %s", strings.TrimPrefix(k, e.prefix))
	}
	return nil
}

// Watch implements Source: a full read, then a watch from the revision
// after it; any watch error (a lost leader, a compacted revision, a
// closed connection) starts over with a full read, so no deleted backend
// survives a reconnect.
func (e *Etcd) Watch(ctx context.Context, update func(Set)) error {
	for ctx.Err() == nil {
		rev, set, err := e.read(ctx)
		if err != nil {
			e.log.Printf("etcd: read %s: %v (retrying)", e.prefix, err)
			sleep(ctx, retryEvery)
			continue
		}
		e.log.Printf("etcd: resynced at revision %d: %d remote backends, %d remote declarations", rev, len(set.backends), len(set.services))
		update(set.values())
		err = e.follow(ctx, rev, set, update)
		if ctx.Err() == nil {
			e.log.Printf("etcd: watch ended (%v); resyncing", err)
			sleep(ctx, retryEvery/5)
		}
	}
	return nil
}

// snapshot is what the other nodes have in etcd, by key.
type snapshot struct {
	backends map[string]Backend
	services map[string]Declared
}

func newSnapshot() *snapshot {
	return &snapshot{backends: map[string]Backend{}, services: map[string]Declared{}}
}

func (e *Etcd) read(ctx context.Context) (int64, *snapshot, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := e.client.Get(rctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, nil, err
	}
	set := newSnapshot()
	for _, kv := range resp.Kvs {
		e.add(set, string(kv.Key), kv.Value)
	}
	return resp.Header.Revision, set, nil
}

// add records a key's backend or declaration unless it is this node's
// or unreadable; keys of other kinds are not read.
func (e *Etcd) add(set *snapshot, key string, value []byte) {
	var err error
	rest := strings.TrimPrefix(key, e.prefix)
	switch {
	case strings.HasPrefix(rest, "backends/"):
		var b Backend
		err = json.Unmarshal(value, &b)
		if err == nil {
			err = services.ValidateName(b.Service)
		}
		if err == nil {
			err = services.ValidateNode(b.Node)
		}
		if err == nil && key != e.key(b) {
			err = fmt.Errorf("the value is %s", b.Key())
		}
		if err == nil && b.Node != e.node {
			set.backends[key] = b
		}
	case strings.HasPrefix(rest, "services/"):
		var d Declared
		err = json.Unmarshal(value, &d)
		if err == nil {
			err = d.Declaration.Validate()
		}
		if err == nil {
			err = services.ValidateNode(d.Node)
		}
		if err == nil && key != e.serviceKey(d) {
			err = fmt.Errorf("the value is service %s of node %s", d.Name, d.Node)
		}
		if err == nil && d.Node != e.node {
			d.Declaration.Normalize()
			set.services[key] = d
		}
	}
	if err != nil {
		// One bad key must not hold up every other one.
		e.log.Printf("etcd: ignoring %s: %v", key, err)
	}
}

// remove forgets a deleted key.
func (set *snapshot) remove(key string) {
	delete(set.backends, key)
	delete(set.services, key)
}

func (e *Etcd) follow(ctx context.Context, rev int64, set *snapshot, update func(Set)) error {
	// Without a leader the member we talk to is cut off: end the watch
	// so that the next read goes to a member that has one.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// A lease lost before this read does not end the watch.
	select {
	case <-e.resync:
	default:
	}
	events := e.client.Watch(wctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-events:
		case <-e.resync:
			return errors.New("this node's lease was lost")
		}
		if !ok {
			break
		}
		// Every response already there is applied before the set is
		// reported: a host publishing a thousand keys costs one report,
		// not a thousand.
		changed := false
		for more := true; more; {
			if err := wr.Err(); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				changed = true
				if ev.Type == clientv3.EventTypeDelete {
					set.remove(k)
				} else {
					set.remove(k) // a bad new value does not keep the old one
					e.add(set, k, ev.Kv.Value)
				}
			}
			select {
			case wr, more = <-events:
				if !more {
					ok = false
				}
			default:
				more = false
			}
		}
		if changed {
			update(set.values())
		}
		if !ok {
			break
		}
	}
	return ctx.Err()
}

// values lists the snapshot, sorted by key: the etcd keys sort as
// Backend.Key and Declared.Key do (one prefix each), and sorting the keys
// themselves spares formatting every endpoint for every comparison (10,000
// backends, once per watch response).
func (set *snapshot) values() Set {
	out := Set{Backends: make([]Backend, 0, len(set.backends)), Services: make([]Declared, 0, len(set.services))}
	for _, k := range slices.Sorted(maps.Keys(set.backends)) {
		out.Backends = append(out.Backends, set.backends[k])
	}
	for _, k := range slices.Sorted(maps.Keys(set.services)) {
		out.Services = append(out.Services, set.services[k])
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
