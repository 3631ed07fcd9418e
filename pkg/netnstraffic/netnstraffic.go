// Package netnstraffic counts the traffic of attachments keyed by network
// namespace (pods through the CRI, pkg/state netns.go).
//
// A cgroup-keyed attachment's packets are counted by cgroup_skb programs on
// its cgroup (bpf/accounting.h). A namespace-keyed one has no cgroup of its
// own: its socket hooks run on a common ancestor (the cgroup v2 root), where
// cgroup_skb programs would run for every packet of the host. Instead, the
// tcx programs of bpf/netns_traffic.c are attached to the interfaces inside
// the pod's namespace (its CNI interface and lo), and count into the same
// traffic map under the attachment's key, so portcullisctl stats and the
// metrics show pods as any other attachment.
//
// Pinned layout, inside the state directory:
//
//	netns-traffic/progs/<name>          the two programs, loaded once
//	netns-traffic/links/<id>/<ifindex>-ingress|-egress
//	                                    the tcx links of one attachment
//
// The links follow the attachment through a state hook: made when it is
// attached, removed when it is detached. A namespace that is deleted first
// takes its interfaces and so its links' attachments with it; the pins go
// at detach.
package netnstraffic

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() {
	state.RegisterHook(state.Hook{
		Attach: func(s *state.State, a *state.Attachment) error { return Attach(s.Dir(), a) },
		Detach: func(s *state.State, a *state.Attachment) error { return Detach(s.Dir(), a.ID) },
		Update: func(*state.State, *state.Attachment, *state.Attachment) error { return nil },
	})
}

// Dir is the folder of the programs and links in the state at stateDir.
func Dir(stateDir string) string { return filepath.Join(stateDir, "netns-traffic") }

// LinkDir is the folder of one attachment's links.
func LinkDir(stateDir, id string) string { return filepath.Join(Dir(stateDir), "links", id) }

// ErrUnsupported is wrapped when the kernel cannot run the programs: tcx
// needs Linux 6.6 (bpf_cast_to_kern_ctx, 6.3).
var ErrUnsupported = errors.New("the kernel cannot count a namespace's traffic (needs tcx, Linux 6.6+)")

var programs = []struct {
	name   string
	attach ebpf.AttachType
	suffix string
}{
	{bpfobj.NetnsTrafficProgNetnsTrafficIngress, ebpf.AttachTCXIngress, "ingress"},
	{bpfobj.NetnsTrafficProgNetnsTrafficEgress, ebpf.AttachTCXEgress, "egress"},
}

// Attach attaches the counting programs to every interface of a
// namespace-keyed attachment's namespace (at ADD: lo and the CNI
// interface); other attachments are left alone. On a kernel that cannot
// run them it does nothing (the attachment has no traffic counters, as
// docs/metrics.md says). Every other failure is returned, and nothing is
// left attached.
func Attach(stateDir string, a *state.Attachment) error {
	if !a.KeyedByNetNS() {
		return nil
	}
	progs, err := load(stateDir)
	if errors.Is(err, ErrUnsupported) {
		return nil
	} else if err != nil {
		return err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	final := LinkDir(stateDir, a.ID)
	if err := detachLinks(final); err != nil { // a crash's leftovers
		return err
	}
	tmp := filepath.Join(Dir(stateDir), "links", "_tmp-"+a.ID)
	if err := detachLinks(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	ids, err := programIDs(progs)
	if err != nil {
		return err
	}
	err = ns.WithNetNSPath(a.NetNS, func(ns.NetNS) error {
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		// Links of an attachment of this namespace detached just
		// before (a repeated ADD) may still be on their way out
		// (Detach): counting beside them would count twice.
		waitReleased(ifaces, ids)
		for _, ifc := range ifaces {
			for i, p := range programs {
				l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: progs[i], Attach: p.attach})
				if err != nil {
					if errors.Is(err, ebpf.ErrNotSupported) {
						return fmt.Errorf("%w: %v", ErrUnsupported, err)
					}
					return fmt.Errorf("attach %s to %s: %w", p.name, ifc.Name, err)
				}
				err = l.Pin(filepath.Join(tmp, fmt.Sprintf("%d-%s", ifc.Index, p.suffix)))
				l.Close()
				if err != nil {
					return fmt.Errorf("pin the %s link of %s: %w", p.suffix, ifc.Name, err)
				}
			}
		}
		return nil
	})
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		detachLinks(tmp)
		if errors.Is(err, ErrUnsupported) {
			return nil
		}
		return fmt.Errorf("traffic counters of %s: %w", a.ID, err)
	}
	return nil
}

// Detach removes the links of attachment id. An attachment without links
// (cgroup-keyed, or made on a kernel without tcx) is no error.
//
// The pins are removed without detaching each link first: unlinking a
// pin drops the link's last reference, and the kernel then releases it
// (takes the programs off the interfaces) from a worker, a few tens of
// milliseconds later. Detaching them here waited for an RCU grace period
// per link under the RTNL lock: about 50 ms of every CNI DEL for four
// links on the 2-vCPU machine. The counters stop with the attachment's
// traffic entry, which detach deletes and the programs never create.
func Detach(stateDir, id string) error {
	dir := LinkDir(stateDir, id)
	paths, _ := filepath.Glob(filepath.Join(dir, "*"))
	var errs []error
	for _, path := range paths {
		errs = append(errs, os.Remove(path))
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// load opens the pinned programs, loading and pinning them first when they
// are not there. They share the state's pinned traffic map.
func load(stateDir string) ([]*ebpf.Program, error) {
	dir := filepath.Join(Dir(stateDir), "progs")
	var progs []*ebpf.Program
	for _, p := range programs {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, p.name), nil)
		if err != nil {
			break
		}
		progs = append(progs, prog)
	}
	if len(progs) == len(programs) {
		return progs, nil
	}
	for _, p := range progs {
		p.Close()
	}

	spec, err := bpfobj.LoadNetnsTraffic()
	if err != nil {
		return nil, err
	}
	traffic, err := ebpf.LoadPinnedMap(filepath.Join(stateDir, "maps", bpfobj.PortcullisMapTraffic), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", bpfobj.PortcullisMapTraffic, err)
	}
	defer traffic.Close()
	spec.Maps[bpfobj.NetnsTrafficMapTraffic].MaxEntries = traffic.MaxEntries()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{bpfobj.NetnsTrafficMapTraffic: traffic},
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) || errors.Is(err, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("load the namespace traffic programs: %w", err)
	}
	defer coll.Close()
	tmp := filepath.Join(Dir(stateDir), "_tmp-progs")
	os.RemoveAll(tmp)
	os.RemoveAll(dir)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	for _, p := range programs {
		if err := coll.Programs[p.name].Pin(filepath.Join(tmp, p.name)); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("pin %s: %w", p.name, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	for _, p := range programs {
		c, err := coll.Programs[p.name].Clone()
		if err != nil {
			for _, done := range progs {
				done.Close()
			}
			return nil, err
		}
		progs = append(progs, c)
	}
	return progs, nil
}

// detachLinks detaches and unpins every link in dir, then removes it. A
// link whose interface is gone with its namespace is only unpinned.
func detachLinks(dir string) error {
	paths, _ := filepath.Glob(filepath.Join(dir, "*"))
	var errs []error
	for _, path := range paths {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, os.Remove(path))
			continue
		}
		l.Detach() // fails harmlessly on a link already defunct
		errs = append(errs, l.Unpin())
		l.Close()
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// releaseWait bounds how long Attach waits for the kernel to release the
// links of a detach just before.
const releaseWait = 2 * time.Second

// waitReleased waits until none of the programs ids is attached to ifaces
// (in the caller's namespace), or releaseWait has passed.
func waitReleased(ifaces []net.Interface, ids map[ebpf.ProgramID]bool) {
	deadline := time.Now().Add(releaseWait)
	for attachedIn(ifaces, ids) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// attachedIn counts the programs ids attached to ifaces (in the caller's
// namespace); an interface that cannot be queried counts none.
func attachedIn(ifaces []net.Interface, ids map[ebpf.ProgramID]bool) int {
	n := 0
	for _, ifc := range ifaces {
		for _, p := range programs {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: p.attach})
			if err != nil {
				continue
			}
			for _, a := range res.Programs {
				if ids[a.ID] {
					n++
				}
			}
		}
	}
	return n
}

func programIDs(progs []*ebpf.Program) (map[ebpf.ProgramID]bool, error) {
	ids := map[ebpf.ProgramID]bool{}
	for _, p := range progs {
		info, err := p.Info()
		if err != nil {
			return nil, err
		}
		id, _ := info.ID()
		ids[id] = true
	}
	return ids, nil
}

// Attached counts the links of this state's programs on the interfaces of
// the namespace at netnsPath, as the kernel lists them (bpftool before
// 7.3 does not show tcx).
func Attached(stateDir, netnsPath string) (int, error) {
	progs, err := load(stateDir)
	if err != nil {
		return 0, err
	}
	ids := map[ebpf.ProgramID]bool{}
	for _, p := range progs {
		info, err := p.Info()
		p.Close()
		if err != nil {
			return 0, err
		}
		id, _ := info.ID()
		ids[id] = true
	}
	n := 0
	err = ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifaces {
			for _, p := range programs {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: p.attach})
				if err != nil {
					return fmt.Errorf("query %s: %w", ifc.Name, err)
				}
				for _, a := range res.Programs {
					if ids[a.ID] {
						n++
					}
				}
			}
		}
		return nil
	})
	return n, err
}
