// Package terminate destroys the client sockets of attached containers that
// are still connected to a backend that went away (seed 004).
//
// Clients that connected through a service address were sent to one
// backend at connect time; when that backend is removed they are left
// hanging (ICMP errors are ignored by established sockets). The iter/tcp and
// iter/udp programs of bpf/terminate.c walk the sockets of one network
// namespace, pick those whose peer is the removed backend and whose cgroup
// is attached, and destroy them with the bpf_sock_destroy kfunc: a TCP
// client gets ECONNABORTED, a connected UDP client gets an error on its next
// call. A socket iterator sees only the network namespace of the process
// that creates it, so the programs run once in the caller's (host)
// namespace and once in every other namespace that holds an attached
// container.
package terminate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Target is one backend to terminate: its address, its port (0 means every
// port of the address) and its protocol ("tcp", "udp"; empty means both).
type Target struct {
	Addr     netip.Addr
	Port     uint16
	Protocol string
}

func (t Target) String() string {
	port := "*"
	if t.Port != 0 {
		port = fmt.Sprint(t.Port)
	}
	proto := t.Protocol
	if proto == "" {
		proto = "tcp+udp"
	}
	host := t.Addr.Unmap().String()
	if t.Addr.Unmap().Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%s/%s", host, port, proto)
}

// Socket is one socket that matched.
type Socket struct {
	Protocol string `json:"protocol"`
	State    string `json:"state"`
	Local    string `json:"local"`
	Peer     string `json:"peer"`
	// CgroupID is the attached cgroup the socket belongs to (its own or
	// the nearest attached ancestor).
	CgroupID uint64 `json:"cgroupId"`
	// Error is set when bpf_sock_destroy failed.
	Error string `json:"error,omitempty"`
}

// Namespace is what one network namespace held.
type Namespace struct {
	// NetNS is "host" for the caller's namespace, else the path recorded
	// by an attachment.
	NetNS string `json:"netns"`
	// Scanned counts the sockets the iterators walked.
	Scanned uint64 `json:"scanned"`
	// ScanTime is how long the scan (and the destroying) took here.
	ScanTime  time.Duration `json:"scanTimeNs"`
	Matched   int           `json:"matched"`
	Destroyed int           `json:"destroyed"`
	Sockets   []Socket      `json:"sockets,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// Report says what a run found and did.
type Report struct {
	DryRun     bool        `json:"dryRun"`
	Targets    []string    `json:"targets"`
	Namespaces []Namespace `json:"namespaces"`
	Matched    int         `json:"matched"`
	Destroyed  int         `json:"destroyed"`
}

// HostNetNS names the caller's own network namespace in reports.
const HostNetNS = "host"

// Backend terminates the sockets of attached containers connected to one
// backend, addr:port over proto ("tcp", "udp" or "" for both). With dryRun
// it only lists them.
func Backend(stateDir string, backend netip.AddrPort, proto string, dryRun bool) (*Report, error) {
	s, err := state.Open(stateDir, false)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return Run(s, []Target{{Addr: backend.Addr(), Port: backend.Port(), Protocol: proto}}, dryRun)
}

// Run terminates (or, with dryRun, lists) the sockets of attached
// containers connected to any of the targets, in the caller's network
// namespace and in every namespace recorded by an attachment. s may be
// locked shared or exclusive; Run reads its attachments and its pinned
// policies map. A namespace that fails is reported and the others are
// still scanned; the error then names every failure.
func Run(s *state.State, targets []Target, dryRun bool) (*Report, error) {
	report := &Report{DryRun: dryRun}
	for _, t := range targets {
		if err := t.validate(); err != nil {
			return nil, err
		}
		report.Targets = append(report.Targets, t.String())
	}
	netnsPaths, err := s.NetNSPaths()
	if err != nil {
		return nil, err
	}

	prog, err := load(s, targets, dryRun)
	if err != nil {
		return nil, err
	}
	defer prog.close()
	return report, prog.scanAll(namespaces(netnsPaths), report)
}

// scanAll runs the iterators in each namespace and adds what they found to
// report. A namespace that fails is reported and the others are still
// scanned; the error then names every failure.
//
// Each (namespace, iterator) read walks the whole of the kernel's table for
// its protocol, filtering by namespace (the TCP one has 262,144 buckets on
// the development VM: about 2 ms whatever the sockets), so the reads run in
// parallel, one per CPU.
func (p *programs) scanAll(paths []string, report *Report) error {
	parts := make([][]Namespace, len(paths))
	errs := make([][]error, len(paths))
	for i := range paths {
		parts[i] = make([]Namespace, len(p.links))
		errs[i] = make([]error, len(p.links))
	}
	var wg sync.WaitGroup
	slots := make(chan struct{}, max(1, runtime.NumCPU()))
	for i, path := range paths {
		for j, l := range p.links {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				parts[i][j], errs[i][j] = p.scanNetNS(path, l, p.protos[j])
			}()
		}
	}
	wg.Wait()
	var all []error
	for i, path := range paths {
		n := Namespace{NetNS: HostNetNS}
		if path != "" {
			n.NetNS = path
		}
		var nsErrs []error
		for j, part := range parts[i] {
			n.Scanned += part.Scanned
			n.Matched += part.Matched
			n.Destroyed += part.Destroyed
			n.Sockets = append(n.Sockets, part.Sockets...)
			n.ScanTime = max(n.ScanTime, part.ScanTime)
			if errs[i][j] != nil {
				nsErrs = append(nsErrs, errs[i][j])
			}
		}
		if err := errors.Join(nsErrs...); err != nil {
			n.Error = err.Error()
			all = append(all, fmt.Errorf("netns %s: %w", n.NetNS, err))
		}
		report.Namespaces = append(report.Namespaces, n)
		report.Matched += n.Matched
		report.Destroyed += n.Destroyed
	}
	return errors.Join(all...)
}

func (t Target) validate() error {
	if !t.Addr.IsValid() || t.Addr.IsUnspecified() {
		return fmt.Errorf("backend address %q is not a usable address", t.Addr)
	}
	switch t.Protocol {
	case "", "tcp", "udp":
	default:
		return fmt.Errorf("protocol %q: must be tcp or udp", t.Protocol)
	}
	return nil
}

// namespaces returns "" for the caller's namespace followed by the distinct
// other namespaces among paths, compared by inode: several attachments
// share one namespace, and a recorded path may name the host's. Paths that
// no longer exist held containers that are gone, so they are left out.
func namespaces(paths []string) []string {
	type inode struct{ dev, ino uint64 }
	key := func(path string) (inode, bool) {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return inode{}, false
		}
		return inode{st.Dev, st.Ino}, true
	}
	seen := map[inode]bool{}
	if k, ok := key("/proc/self/ns/net"); ok {
		seen[k] = true
	}
	out := []string{""}
	sort.Strings(paths)
	for _, p := range paths {
		if p == "" {
			continue
		}
		k, ok := key(p)
		if !ok || seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, p)
	}
	return out
}

// programs are the pinned iterators (state.TerminationDir), locked for
// one run and ready to run in any namespace.
type programs struct {
	lock    *os.File
	targets *ebpf.Map
	links   []*link.Iter
	// protos is the protocol of each link's iterator, "tcp" or "udp".
	protos []string
	dryRun bool
}

// Actions of the targets map (bpf/terminate.c).
const (
	actionDestroy = 1
	actionList    = 2
)

// load takes the pinned termination iterators for one run: it locks their
// folder (the targets map is shared by every run) and fills targets.
func load(s *state.State, targets []Target, dryRun bool) (_ *programs, err error) {
	dir := s.TerminationDir()
	lock, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (the state was loaded without the termination programs)", ErrUnsupported)
	} else if err != nil {
		return nil, err
	}
	p := &programs{lock: lock, dryRun: dryRun}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if err := state.Lock(lock, unix.LOCK_EX); err != nil {
		return nil, err
	}
	if p.targets, err = bpfobj.LoadPinnedMap(filepath.Join(dir, bpfobj.TerminateMapTargets)); err != nil {
		return nil, fmt.Errorf("open pinned targets map: %w", err)
	}
	// A run that crashed may have left its targets.
	if err := clearMap(p.targets); err != nil {
		return nil, err
	}
	action := uint8(actionDestroy)
	if dryRun {
		action = actionList
	}
	protos := map[string]bool{}
	for _, t := range targets {
		for _, key := range t.keys() {
			if err := p.targets.Put(&key, action); err != nil {
				return nil, fmt.Errorf("targets map: %w", err)
			}
		}
		if t.Protocol == "" || t.Protocol == "tcp" {
			protos["tcp"] = true
		}
		if t.Protocol == "" || t.Protocol == "udp" {
			protos["udp"] = true
		}
	}
	// Run only the iterators some target needs.
	for _, name := range []string{bpfobj.TerminateProgTerminateTcp, bpfobj.TerminateProgTerminateUdp} {
		if !protos[strings.TrimPrefix(name, "terminate_")] {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned iterator %s: %w", name, err)
		}
		it, ok := l.(*link.Iter)
		if !ok {
			l.Close()
			return nil, fmt.Errorf("%s is not an iterator link", name)
		}
		p.links = append(p.links, it)
		p.protos = append(p.protos, strings.TrimPrefix(name, "terminate_"))
	}
	return p, nil
}

func (p *programs) close() {
	for _, l := range p.links {
		l.Close()
	}
	if p.targets != nil {
		clearMap(p.targets)
		p.targets.Close()
	}
	if p.lock != nil {
		p.lock.Close() // drops the flock
	}
}

// clearMap deletes every entry of the (small) targets map.
func clearMap(m *ebpf.Map) error {
	var (
		key  bpfobj.TerminateTermTarget
		keys []bpfobj.TerminateTermTarget
		val  uint8
	)
	iter := m.Iterate()
	for iter.Next(&key, &val) {
		keys = append(keys, key)
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("targets map: %w", err)
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("targets map: %w", err)
		}
	}
	return nil
}

// ErrUnsupported is wrapped when the kernel cannot run the termination
// programs (bpf_sock_destroy is in kernels 6.5 and later).
var ErrUnsupported = errors.New("the kernel cannot destroy sockets from BPF (needs the bpf_sock_destroy kfunc and tcp/udp iterators, kernel 6.5+; see portcullisctl doctor)")

// keys are the targets map entries for t.
func (t Target) keys() []bpfobj.TerminateTermTarget {
	addr := t.Addr.As16() // IPv4 becomes IPv4-mapped, as the programs compare
	var key bpfobj.TerminateTermTarget
	for i := range key.Addr {
		key.Addr[i] = binary.NativeEndian.Uint32(addr[4*i:])
	}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], t.Port)
	key.Port = binary.NativeEndian.Uint16(port[:])
	var keys []bpfobj.TerminateTermTarget
	for _, proto := range []string{"tcp", "udp"} {
		if t.Protocol == "" || t.Protocol == proto {
			key.Protocol = protocolNumber[proto]
			keys = append(keys, key)
		}
	}
	return keys
}

var protocolNumber = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP}

// scanNetNS runs one iterator, of protocol proto, in one namespace ("" is
// the caller's). An iterator is bound to the namespace of the thread that
// opens it, so it is opened (and read) on a thread locked into the
// namespace. A namespace without a socket of the protocol is not walked.
func (p *programs) scanNetNS(path string, l *link.Iter, proto string) (Namespace, error) {
	n := Namespace{NetNS: HostNetNS}
	start := time.Now()
	scan := func() error {
		defer func() { n.ScanTime = time.Since(start) }()
		if !hasSockets(proto) {
			return nil
		}
		return n.read(l, p.dryRun)
	}
	if path == "" {
		return n, scan()
	}
	n.NetNS = path
	err := ns.WithNetNSPath(path, func(ns.NetNS) error { return scan() })
	return n, err
}

// hasSockets tells whether the calling thread's network namespace holds a
// socket of proto ("tcp" or "udp"), IPv4 or IPv6, from the namespace's own
// counts in /proc/thread-self/net/sockstat and sockstat6 ("TCP: inuse N",
// the hashed sockets: listeners, connecting and connected ones; time-wait
// sockets, which are never matched, are counted apart). An iterator walks
// the kernel's whole table for its protocol, shared by every namespace
// (262,144 TCP buckets on the development VM, about 2 ms), so an idle
// pod's namespace is not worth it. When the counts cannot be read, it
// says yes.
func hasSockets(proto string) bool {
	label := map[string]string{"tcp": "TCP", "udp": "UDP"}[proto]
	if label == "" {
		return true
	}
	for _, file := range []string{"sockstat", "sockstat6"} {
		data, err := os.ReadFile("/proc/thread-self/net/" + file)
		if err != nil {
			return true
		}
		want := label + ":"
		if file == "sockstat6" {
			want = label + "6:"
		}
		found := false
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == want && f[1] == "inuse" {
				found = true
				if f[2] != "0" {
					return true
				}
			}
		}
		if !found {
			return true
		}
	}
	return false
}

// readSize keeps every read below the kernel's 32 KiB iterator buffer: a
// socket whose record overflows that buffer is shown again on the next
// read. A destroying run writes records only for failures, so its output
// normally comes in one read, and the walk never stops and resumes in
// the middle (which older kernels do by an offset that destroyed sockets
// have shifted: see session_counts in bpf/sockiter.h).
const readSize = 4096

// read runs one iterator to its end and adds its events to n.
func (n *Namespace) read(l *link.Iter, dryRun bool) error {
	r, err := l.Open()
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	defer r.Close()
	var out bytes.Buffer
	buf := make([]byte, readSize)
	for {
		k, err := r.Read(buf)
		out.Write(buf[:k])
		if err == io.EOF || (err == nil && k == 0) {
			break
		}
		if errors.Is(err, unix.EAGAIN) {
			// The kernel walks at most a million sockets per read;
			// with nothing to return yet it says EAGAIN, and the
			// next read goes on.
			continue
		}
		if err != nil {
			return fmt.Errorf("read iterator: %w", err)
		}
	}
	var ev bpfobj.TerminateTermEvent
	size := binary.Size(ev)
	if out.Len()%size != 0 {
		return fmt.Errorf("iterator output of %d bytes is not a whole number of %d-byte records: "+
			"the pinned termination programs are from another version of portcullis (unload and load the state to replace them)", out.Len(), size)
	}
	for out.Len() > 0 {
		if err := binary.Read(&out, binary.NativeEndian, &ev); err != nil {
			return err
		}
		n.add(&ev, dryRun)
	}
	return nil
}

const (
	eventSocket  = 1
	eventSummary = 2
)

func (n *Namespace) add(ev *bpfobj.TerminateTermEvent, dryRun bool) {
	if ev.Kind == eventSummary {
		// The sockets destroyed without a record of their own.
		n.Scanned += ev.Scanned
		n.Matched += int(ev.Matched)
		n.Destroyed += int(ev.Destroyed)
		return
	}
	// A record: a socket listed by a dry run, or one the program failed
	// to destroy (or destroyed but could not count).
	sock := Socket{
		Protocol: "tcp",
		State:    tcpStates[ev.State],
		Local:    netip.AddrPortFrom(addrFrom(ev.Local), ev.LocalPort).String(),
		Peer:     netip.AddrPortFrom(addrFrom(ev.Peer), ev.PeerPort).String(),
		CgroupID: ev.CgroupId,
	}
	if ev.Protocol == unix.IPPROTO_UDP {
		sock.Protocol, sock.State = "udp", "connected"
	}
	if sock.State == "" {
		sock.State = fmt.Sprint(ev.State)
	}
	n.Matched++
	if ev.Result != 0 {
		sock.Error = unix.Errno(-ev.Result).Error()
	} else if !dryRun {
		n.Destroyed++
	}
	n.Sockets = append(n.Sockets, sock)
}

// addrFrom turns an address as the kernel stores it (network byte order in
// native-endian u32 words) into a netip.Addr; IPv4-mapped become IPv4.
func addrFrom(words [4]uint32) netip.Addr {
	var b [16]byte
	for i, w := range words {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

var tcpStates = map[uint8]string{
	1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait-1", 5: "fin-wait-2",
	6: "time-wait", 7: "close", 8: "close-wait", 9: "last-ack", 10: "listen", 11: "closing",
}
