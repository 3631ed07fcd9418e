package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// NetNSKey marks a policy key as a network namespace cookie (bpf/netns.h):
// a namespace-keyed attachment's CgroupID is NetNSKey | its cookie, and
// every per-container map entry uses that key.
const NetNSKey = 1 << 63

// Layout of the copy of the programs that serves namespace-keyed policies:
//
//	netns/progs/<name>   the programs, loaded with netns_copy = 1
//	netns/links/<name>   their bpf_links on the common ancestor cgroup,
//	                     present while a namespace-keyed attachment exists
func (s *State) netnsDir(sub string) string { return filepath.Join(s.dir, "netns", sub) }

// KeyedByNetNS reports whether the attachment follows a network namespace
// rather than a cgroup.
func (a *Attachment) KeyedByNetNS() bool { return a.CgroupID&NetNSKey != 0 }

// Target names what the attachment follows: its cgroup's path, or
// "netns:" and its network namespace's path.
func (a *Attachment) Target() string {
	if a.KeyedByNetNS() {
		return "netns:" + a.NetNS
	}
	return a.CgroupPath
}

// NetNSCookie returns the cookie of the network namespace at path, the
// value bpf_get_netns_cookie and the programs read. Where the kernel's
// namespace id is the cookie (checked once per process on its own
// namespace), the namespace file answers it (NS_GET_ID); otherwise a
// socket created inside the namespace does (SO_NETNS_COOKIE, kernel
// 5.14+), which costs entering the namespace and back on a thread of its
// own, several times what the rest of a CNI ADD does.
func NetNSCookie(path string) (uint64, error) {
	if nsIDIsCookie() {
		if id, err := nsID(path); err == nil {
			return id, nil
		}
	}
	var cookie uint64
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("SO_NETNS_COOKIE (kernel 5.14+): %w", err)
		}
		cookie = v
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return cookie, nil
}

// linux/nsfs.h: NS_GET_NSTYPE is _IO(NSIO, 0x3), NS_GET_ID is
// _IOR(NSIO, 0xd, __u64) (6.17+).
const (
	nsGetNSType = 0xb703
	nsGetID     = 0x8008b70d
)

// nsID returns the id of the network namespace file at path. Only an
// nsfs file is opened (a FIFO would block the open, as ns.GetNS knows).
func nsID(path string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, err
	} else if fs.Type != unix.NSFS_MAGIC {
		return 0, errors.New("not a namespace file")
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if t, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetNSType, 0); errno != 0 {
		return 0, errno
	} else if t != unix.CLONE_NEWNET {
		return 0, errors.New("not a network namespace")
	}
	var id uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetID, uintptr(unsafe.Pointer(&id))); errno != 0 {
		return 0, errno
	}
	return id, nil
}

// nsIDIsCookie tells whether the kernel gives a network namespace the same
// id as its cookie (6.18 does): the process's own namespace answers both
// without entering any.
var nsIDIsCookie = sync.OnceValue(func() bool {
	id, err := nsID("/proc/thread-self/ns/net")
	if err != nil {
		return false
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	return err == nil && cookie == id
})

// NetNSAlive reports whether a namespace-keyed attachment's namespace is
// still there (its path names the same namespace).
func (a *Attachment) NetNSAlive() bool {
	cookie, err := NetNSCookie(a.NetNS)
	return err == nil && NetNSKey|cookie == a.CgroupID
}

// netnsProgramList is the programs the namespace copy attaches: all of the
// program table. Its cgroup_skb programs (bpf/accounting.h) count only
// the sockets of namespace-keyed attachments; a host packet costs them one
// socket-storage lookup that misses.
func (s *State) netnsProgramList() ([]cgroupProgram, error) {
	return s.cgroupPrograms()
}

// ensureNetNSLinks loads the namespace copy of the programs (once per
// state) and attaches it to parent (the cgroup v2 root when empty), unless
// it is attached already. It refuses a second, different parent.
func (s *State) ensureNetNSLinks(parent string) error {
	if parent == "" {
		mount, err := cgroup.Mount()
		if err != nil {
			return err
		}
		parent = mount
	}
	cg, err := cgroup.Resolve(parent)
	if err != nil {
		return fmt.Errorf("namespace programs' cgroup: %w", err)
	}
	links := s.netnsDir("links")
	list, err := s.netnsProgramList()
	if err != nil {
		return err
	}
	if attached, err := netnsLinksCgroup(links); err != nil {
		return err
	} else if attached != 0 {
		if attached != cg.ID {
			return fmt.Errorf("the namespace programs of %s are attached to another cgroup than %s: use the same netns cgroup for every network, or detach every namespace-keyed attachment first", s.dir, cg.Path)
		}
		return s.completeNetNSLinks(list, links, cg.Path)
	}
	progs, err := s.netnsPrograms(list)
	if err != nil {
		return err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	tmp := s.netnsDir("_tmp-links")
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	for _, p := range list {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: p.attach, Program: progs[p.name]})
		if err != nil {
			detachLinks(tmp)
			return fmt.Errorf("attach namespace program %s to %s: %w", p.name, cg.Path, err)
		}
		err = l.Pin(filepath.Join(tmp, p.name))
		l.Close()
		if err != nil {
			detachLinks(tmp)
			return fmt.Errorf("pin namespace link %s: %w", p.name, err)
		}
	}
	if err := os.Rename(tmp, links); err != nil {
		detachLinks(tmp)
		return err
	}
	return nil
}

// completeNetNSLinks attaches the programs of list that have no link in
// links yet: links made by a version of portcullis with fewer programs in
// the namespace copy (before its cgroup_skb accounting) stay, and the new
// programs join them.
func (s *State) completeNetNSLinks(list []cgroupProgram, links, cgroupPath string) error {
	var missing []cgroupProgram
	for _, p := range list {
		if _, err := os.Stat(filepath.Join(links, p.name)); errors.Is(err, os.ErrNotExist) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	progs, err := s.netnsPrograms(list)
	if err != nil {
		return err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, p := range missing {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: p.attach, Program: progs[p.name]})
		if err != nil {
			return fmt.Errorf("attach namespace program %s to %s: %w", p.name, cgroupPath, err)
		}
		err = l.Pin(filepath.Join(links, p.name))
		if err != nil {
			l.Close()
			return fmt.Errorf("pin namespace link %s: %w", p.name, err)
		}
		l.Close()
	}
	return nil
}

// netnsLinksCgroup returns the cgroup id the namespace links are attached
// to, or 0 when they are not.
func netnsLinksCgroup(dir string) (uint64, error) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, path := range paths {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			continue
		}
		info, err := l.Info()
		l.Close()
		if err == nil && info.Cgroup() != nil {
			return info.Cgroup().CgroupId, nil
		}
	}
	if len(paths) > 0 {
		// Defunct links (their cgroup was removed): start again.
		if err := detachLinks(dir); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// asNetnsCopy turns spec into the namespace copy: only the programs of
// list, with the copy's flag set (its programs key by network namespace).
func asNetnsCopy(spec *ebpf.CollectionSpec, list []cgroupProgram) error {
	keep := map[string]bool{}
	for _, p := range list {
		keep[p.name] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	return spec.Variables[bpfobj.PortcullisVarNetnsCopy].Set(uint32(1))
}

// netnsPrograms opens the pinned namespace copy, loading and pinning it
// first when it is not there (the only time the BPF object is parsed). It
// shares every map of the state.
func (s *State) netnsPrograms(list []cgroupProgram) (map[string]*ebpf.Program, error) {
	dir := s.netnsDir("progs")
	progs := map[string]*ebpf.Program{}
	for _, p := range list {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, p.name), nil)
		if err != nil {
			break
		}
		progs[p.name] = prog
	}
	if len(progs) == len(list) {
		return progs, nil
	}
	for _, p := range progs {
		p.Close()
	}

	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return nil, err
	}
	if err := asNetnsCopy(spec, list); err != nil {
		return nil, err
	}
	replace := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // this copy's own globals
		}
		m, err := bpfobj.LoadPinnedMap(filepath.Join(s.dir, "maps", name))
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		defer m.Close()
		// The state's maps were sized at load (Sizes).
		spec.Maps[name].MaxEntries = m.MaxEntries()
		replace[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		return nil, explainLoadError(err)
	}
	defer coll.Close()
	tmp := s.netnsDir("_tmp-progs")
	os.RemoveAll(tmp)
	os.RemoveAll(dir)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	for name, p := range coll.Programs {
		if err := p.Pin(filepath.Join(tmp, name)); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("pin namespace program %s: %w", name, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	for name, p := range coll.Programs {
		c, err := p.Clone()
		if err != nil {
			return nil, err
		}
		progs[name] = c
	}
	return progs, nil
}

// dropNetNSLinksIfUnused detaches the namespace programs from the common
// ancestor once no namespace-keyed attachment is left, so host tasks pay
// nothing while there is no such container.
func (s *State) dropNetNSLinksIfUnused() error {
	var (
		key uint64
		id  bpfobj.PortcullisAttachmentId
	)
	iter := s.index.Iterate()
	for iter.Next(&key, &id) {
		if key&NetNSKey != 0 {
			return nil
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("attachment index: %w", err)
	}
	if err := detachLinks(s.netnsDir("links")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach namespace programs: %w", err)
	}
	return nil
}

// verifyNetNSLinks checks that every namespace program has a live link.
func (s *State) verifyNetNSLinks(id string) error {
	list, err := s.netnsProgramList()
	if err != nil {
		return err
	}
	for _, p := range list {
		name := p.name
		l, err := link.LoadPinnedLink(filepath.Join(s.netnsDir("links"), name), nil)
		if err != nil {
			return fmt.Errorf("attachment %s: namespace link %s is not pinned: %w", id, name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil || info.Cgroup() == nil {
			return fmt.Errorf("attachment %s: namespace link %s is not attached to a cgroup", id, name)
		}
	}
	return nil
}
