// Package dispatch is socket dispatch with sk_lookup (seed 002, after
// cloudflare/tubular): bindings of (protocol, prefix, ports) send incoming
// TCP connections and UDP datagrams to the socket registered under a label,
// so one socket serves a whole prefix and any ports, and services share a
// port on disjoint prefixes, without binding thousands of sockets or TPROXY.
//
// Each network namespace gets its own dispatcher: a copy of the sk_lookup
// program of bpf/dispatch.c and its maps, attached with a pinned bpf_link.
// It is built on first use under the state directory,
//
//	dispatch/netns-<inode>/link         the bpf_link to the namespace
//	dispatch/netns-<inode>/maps/<name>  blocks, levels, sockets, counters,
//	                                    destinations, rules
//
// in a temporary folder renamed into place, so it is complete or absent.
// Callers hold the state's lock (exclusive to change anything), which
// serialises every writer.
package dispatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// ErrNoDispatcher is returned when a namespace has no dispatcher yet.
var ErrNoDispatcher = errors.New("nothing is bound or registered in this network namespace")

// Dispatcher is the open dispatcher of one network namespace.
type Dispatcher struct {
	s     *state.State
	netns string // as given; "" is the caller's namespace
	ino   uint64
	dir   string
	maps  bpfobj.DispatchMaps
}

// NetNS names the namespace: its path, or "host" for the caller's.
func (d *Dispatcher) NetNS() string {
	if d.netns == "" {
		return "host"
	}
	return d.netns
}

// Open opens the dispatcher of a network namespace (a path such as
// /run/netns/NAME; "" is the caller's). With create it is built and
// attached when absent; s must then be locked exclusively.
func Open(s *state.State, netns string, create bool) (*Dispatcher, error) {
	ino, err := netnsInode(netns)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{s: s, netns: netns, ino: ino, dir: dispatcherDir(s, ino)}
	live, err := d.live()
	if err != nil {
		return nil, err
	}
	if !live {
		if !create {
			return nil, ErrNoDispatcher
		}
		if err := d.build(); err != nil {
			return nil, err
		}
	}
	if err := d.openMaps(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close releases the maps.
func (d *Dispatcher) Close() { d.maps.Close() }

func dispatcherDir(s *state.State, ino uint64) string {
	return filepath.Join(s.Dir(), "dispatch", fmt.Sprintf("netns-%d", ino))
}

// netnsInode identifies a namespace by its nsfs inode, as tubular does.
func netnsInode(path string) (uint64, error) {
	name := path
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", name, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a network namespace (want a path like /run/netns/NAME or /proc/PID/ns/net)", name)
	}
	return st.Ino, nil
}

// live tells whether the folder holds a dispatcher still attached to this
// namespace. A folder whose link went defunct (its namespace died, and the
// inode may have been reused since) is stale and is removed.
func (d *Dispatcher) live() (bool, error) {
	if _, err := os.Stat(d.dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if linkAlive(d.dir, d.ino) {
		return true, nil
	}
	return false, removeDispatcher(d.dir)
}

// linkAlive tells whether dir's pinned link is attached to namespace ino.
func linkAlive(dir string, ino uint64) bool {
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.NetNs() == nil {
		return false
	}
	return uint64(info.NetNs().NetnsInode) == ino
}

// removeDispatcher detaches the link through its own fd (so the namespace
// stops dispatching at once) and removes the folder.
func removeDispatcher(dir string) error {
	if l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil); err == nil {
		l.Detach()
		l.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove dispatcher %s: %w", dir, err)
	}
	return nil
}

// build loads the program and maps, pins the maps, attaches the program to
// the namespace and pins the link, all in a temporary folder that is renamed
// into place last.
func (d *Dispatcher) build() (err error) {
	parent := filepath.Dir(d.dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	spec, err := bpfobj.LoadDispatch()
	if err != nil {
		return err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return fmt.Errorf("load the dispatch program (run portcullisctl doctor): %w", err)
	}
	defer coll.Close()

	tmp := filepath.Join(parent, "_tmp-"+filepath.Base(d.dir))
	removeDispatcher(tmp) // left by a crash
	if err := os.MkdirAll(filepath.Join(tmp, "maps"), 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			removeDispatcher(tmp)
		}
	}()
	for name, m := range coll.Maps {
		if err := m.Pin(filepath.Join(tmp, "maps", name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	nsPath := d.netns
	if nsPath == "" {
		nsPath = "/proc/self/ns/net"
	}
	nsFile, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", d.NetNS(), err)
	}
	defer nsFile.Close()
	l, err := link.AttachNetNs(int(nsFile.Fd()), coll.Programs[bpfobj.DispatchProgDispatch])
	if err != nil {
		return fmt.Errorf("attach sk_lookup to network namespace %s (kernel 5.9+): %w", d.NetNS(), err)
	}
	err = l.Pin(filepath.Join(tmp, "link"))
	if err != nil {
		l.Close()
		return fmt.Errorf("pin dispatch link: %w", err)
	}
	l.Close()
	if err := os.Rename(tmp, d.dir); err != nil {
		return fmt.Errorf("create dispatcher %s: %w", d.dir, err)
	}
	return nil
}

func (d *Dispatcher) openMaps() error {
	maps := map[string]**ebpf.Map{
		bpfobj.DispatchMapBlocks:       &d.maps.Blocks,
		bpfobj.DispatchMapLevels:       &d.maps.Levels,
		bpfobj.DispatchMapSockets:      &d.maps.Sockets,
		bpfobj.DispatchMapCounters:     &d.maps.Counters,
		bpfobj.DispatchMapDestinations: &d.maps.Destinations,
		bpfobj.DispatchMapRules:        &d.maps.Rules,
	}
	for name, dst := range maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(d.dir, "maps", name), nil)
		if err != nil {
			return fmt.Errorf("open pinned dispatch map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", name, err)
		}
		*dst = m
	}
	return nil
}

// dispatchers lists the folders of every dispatcher in the state.
func dispatchers(s *state.State) []string {
	dirs, _ := filepath.Glob(filepath.Join(s.Dir(), "dispatch", "netns-*"))
	return dirs
}
