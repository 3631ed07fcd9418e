package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/hostaddr"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// ErrNotFound is returned for an attachment id that does not exist.
var ErrNotFound = errors.New("no such attachment")

// Attachment is what the state records about one attached cgroup.
type Attachment struct {
	ID         string        `json:"id"`
	CgroupPath string        `json:"cgroupPath"`
	CgroupID   uint64        `json:"cgroupId"`
	Policy     policy.Policy `json:"policy"`
	AttachedAt time.Time     `json:"attachedAt"`
	// Owner says which tool attached it: "portcullisctl", "cni", "oci-hook".
	Owner string `json:"owner,omitempty"`
	// NetNS is the network namespace the container's sockets live in, when
	// it has its own.
	NetNS string `json:"netns,omitempty"`
	// For an attachment keyed by its network namespace (KeyedByNetNS),
	// CgroupID is the policy key NetNSKey | the namespace's cookie and
	// CgroupPath is empty.

	// NetNSCookie is the cookie of the namespace the addresses are owned
	// in (pkg/isolation), so detach finds them after it is gone.
	NetNSCookie uint64 `json:"netnsCookie,omitempty"`
}

// Cgroup returns the attached cgroup.
func (a *Attachment) Cgroup() cgroup.Cgroup {
	return cgroup.Cgroup{Path: a.CgroupPath, ID: a.CgroupID}
}

// AttachRequest asks for a policy on a cgroup.
type AttachRequest struct {
	ID     string
	Cgroup string // absolute or relative to the cgroup v2 mount
	Policy *policy.Policy
	// NetNS is the network namespace whose addresses the policy's
	// addresses must belong to; empty means the caller's.
	NetNS string
	Owner string
	// KeyByNetNS keys the policy by NetNS instead of a cgroup: it covers
	// every task in that namespace, whatever its cgroup (netns.go).
	KeyByNetNS bool
	// NetNSCgroup is where the namespace programs are attached: a common
	// ancestor of the containers' cgroups; empty is the cgroup v2 root.
	NetNSCgroup string
	// AddressesChecked says the caller has just checked that the policy's
	// addresses are local in NetNS (hostaddr.CheckLocal), so Attach does
	// not enter the namespace again to check them.
	AddressesChecked bool
}

// attachmentIDMax is the size of the kernel record key, NUL included.
const attachmentIDMax = len(bpfobj.PortcullisAttachmentId{}.Id)

// bpffs refuses names with a dot, and "_" starts the temporary folders.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_:-]*$`)

// ValidateID checks that an attachment id can name a bpffs folder and fits
// the kernel's record key.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) >= attachmentIDMax {
		return fmt.Errorf("attachment id %q: must be 1-%d characters", id, attachmentIDMax-1)
	}
	if !validID.MatchString(id) {
		return fmt.Errorf("attachment id %q: must start with a letter or digit; then letters, digits and _ : - (bpffs refuses dots)", id)
	}
	return nil
}

// Attach records the policy in the maps and attaches every cgroup program
// to the cgroup with a pinned bpf_link. On any error everything done so far
// is undone: nothing is left half-attached.
func (s *State) Attach(req AttachRequest) (_ *Attachment, err error) {
	if err := ValidateID(req.ID); err != nil {
		return nil, err
	}
	if req.Policy == nil {
		req.Policy = &policy.Policy{}
	}
	cg, err := s.attachTarget(&req)
	if err != nil {
		return nil, err
	}
	if err := cgroup.RefuseRoot(cg); err != nil {
		return nil, err
	}
	if existing, err := s.Get(req.ID); err == nil {
		return nil, fmt.Errorf("attachment %q already exists (cgroup %s); detach it first", req.ID, existing.CgroupPath)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if holder, err := s.attachmentOfKey(cg.ID); err != nil {
		return nil, err
	} else if holder != "" && req.KeyByNetNS {
		return nil, fmt.Errorf("network namespace %s is already attached as %q", req.NetNS, holder)
	} else if holder != "" {
		return nil, fmt.Errorf("cgroup %s is already attached as %q", cg.Path, holder)
	}
	if err := checkNetNSPath(req.NetNS); err != nil {
		return nil, err
	}
	if !req.AddressesChecked {
		if err := hostaddr.CheckLocal(req.NetNS, req.Policy.Addresses); err != nil {
			return nil, err
		}
	}

	a := &Attachment{
		ID:         req.ID,
		CgroupPath: cg.Path,
		CgroupID:   cg.ID,
		Policy:     *req.Policy,
		AttachedAt: now().UTC().Truncate(time.Second),
		Owner:      req.Owner,
		NetNS:      req.NetNS,
	}

	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	release, err := s.claimAddresses(a)
	if err != nil {
		return nil, err
	}
	undo.push(release)
	record, err := encodeRecord(a)
	if err != nil {
		return nil, err
	}
	bindPolicy, err := bindTimePolicy(req.Policy, req.KeyByNetNS)
	if err != nil {
		return nil, err
	}
	compiled := compile(cg.ID, bindPolicy)
	for _, e := range compiled.portmaps {
		if err := s.put(s.portmaps, &e.key, &e.value); err != nil {
			return nil, err
		}
		key := e.key
		undo.push(func() { s.portmaps.Delete(&key) })
	}
	// Counters first, so the policy's first decisions are counted.
	if err := s.createCounters(a.CounterKey()); err != nil {
		return nil, err
	}
	undo.push(func() { s.deleteCounters(a.CounterKey()) })
	if err := s.put(s.policies, &cg.ID, &compiled.policy); err != nil {
		return nil, err
	}
	undo.push(func() { s.policies.Delete(&cg.ID) })
	if err := s.syncGuards(a, nil); err != nil {
		return nil, err
	}
	undo.push(func() { s.forgetGuards(a) })
	if req.KeyByNetNS {
		if err := s.ensureNetNSLinks(req.NetNSCgroup); err != nil {
			return nil, err
		}
		undo.push(func() { s.dropNetNSLinksIfUnused() })
		if err := s.publishPorts(a); err != nil {
			return nil, err
		}
		undo.push(func() { s.unpublishPorts(a) })
		return a, s.record(a, record, &undo)
	}

	// Links are pinned in a temporary folder and renamed into place, so
	// an attachment's folder is always complete.
	tmp := filepath.Join(s.dir, "cgroups", "_tmp-"+req.ID)
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	undo.push(func() { detachLinks(tmp) })
	progs, err := s.cgroupPrograms()
	if err != nil {
		return nil, err
	}
	for _, p := range progs {
		name := p.name
		prog, err := s.loadProgram(programFor(name, req.Policy))
		if err != nil {
			return nil, err
		}
		l, err := link.AttachCgroup(link.CgroupOptions{
			Path:    cg.Path,
			Attach:  p.attach,
			Program: prog,
		})
		prog.Close()
		if err != nil {
			return nil, fmt.Errorf("attach %s to %s: %w", name, cg.Path, err)
		}
		err = l.Pin(filepath.Join(tmp, name))
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("pin link %s (needs bpf_link support, kernel 5.7+): %w", name, err)
		}
	}
	final := s.linkDir(req.ID)
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	undo.push(func() { detachLinks(final) })
	return a, s.record(a, record, &undo)
}

// attachTarget resolves what a request attaches: its cgroup, or the key of
// its network namespace.
func (s *State) attachTarget(req *AttachRequest) (cgroup.Cgroup, error) {
	if !req.KeyByNetNS {
		return cgroup.Resolve(req.Cgroup)
	}
	if req.NetNS == "" {
		return cgroup.Cgroup{}, errors.New("a policy keyed by network namespace needs the namespace's path")
	}
	cookie, err := NetNSCookie(req.NetNS)
	if err != nil {
		return cgroup.Cgroup{}, err
	}
	return cgroup.Cgroup{ID: NetNSKey | cookie}, nil
}

// record writes an attachment's record and brings the services up to date:
// the last steps of Attach.
func (s *State) record(a *Attachment, r *record, undo *undoStack) error {
	if err := s.putRecord(a.ID, r); err != nil {
		return err
	}
	undo.push(func() { s.deleteRecord(a.ID) })
	key := policyKey(a)
	if err := s.put(s.index, &key, recordKey(a.ID)); err != nil {
		return err
	}
	undo.push(func() { s.index.Delete(&key) })
	if err := s.countNetNS(a.NetNS, 1); err != nil {
		return err
	}
	undo.push(func() { s.countNetNS(a.NetNS, -1) })
	if err := s.runAttachHooks(a, undo); err != nil {
		return err
	}
	return s.syncServices(a, false)
}

// Detach removes an attachment: its links (synchronously, so the cgroup's
// sockets see the change when Detach returns), its map entries and its
// record. It returns ErrNotFound for an unknown id.
func (s *State) Detach(id string) error {
	a, err := s.Get(id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			// A crash between pinning and recording can leave a
			// folder without a record; remove it too.
			if _, statErr := os.Stat(s.linkDir(id)); statErr == nil {
				return detachLinks(s.linkDir(id))
			}
		}
		return err
	}
	if err := detachLinks(s.linkDir(id)); err != nil {
		return err
	}
	for _, e := range compile(a.CgroupID, &a.Policy).portmaps {
		s.portmaps.Delete(&e.key)
	}
	if err := s.policies.Delete(&a.CgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	if err := s.forgetGuards(a); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	if err := s.deleteRecord(id); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	if err := s.unindex(policyKey(a), id); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	s.deleteCounters(a.CounterKey())
	s.releaseAddresses(a)
	if err := s.countNetNS(a.NetNS, -1); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	if a.KeyedByNetNS() {
		if err := s.unpublishPorts(a); err != nil {
			return fmt.Errorf("detach %s: unpublish: %w", id, err)
		}
		if err := s.dropNetNSLinksIfUnused(); err != nil {
			return err
		}
	}
	return errors.Join(s.syncServices(a, true), s.runDetachHooks(a))
}

// Get returns one attachment's record.
func (s *State) Get(id string) (*Attachment, error) {
	if ValidateID(id) != nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	var rec bpfobj.PortcullisRecord
	if err := s.records.Lookup(recordKey(id), &rec); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		return nil, err
	}
	return s.decodeRecord(id, &rec)
}

// Attachments lists every attachment, sorted by id.
func (s *State) Attachments() ([]Attachment, error) {
	list, err := s.batchRecords()
	if errors.Is(err, ebpf.ErrNotSupported) {
		list, err = s.iterateRecords()
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	return list, nil
}

// batchRecords reads the records 128 at a time (one syscall per batch
// instead of two per record).
func (s *State) batchRecords() ([]Attachment, error) {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]bpfobj.PortcullisAttachmentId, 128)
		recs   = make([]bpfobj.PortcullisRecord, 128)
		list   []Attachment
	)
	for {
		n, err := s.records.BatchLookup(&cursor, keys, recs, nil)
		for i := 0; i < n; i++ {
			a, err := s.decodeRecord(string(bytes.TrimRight(keys[i].Id[:], "\x00")), &recs[i])
			if err != nil {
				return nil, err
			}
			list = append(list, *a)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return list, nil
		} else if err != nil {
			return nil, err
		}
	}
}

func (s *State) iterateRecords() ([]Attachment, error) {
	var (
		key  bpfobj.PortcullisAttachmentId
		rec  bpfobj.PortcullisRecord
		list []Attachment
	)
	iter := s.records.Iterate()
	for iter.Next(&key, &rec) {
		a, err := s.decodeRecord(string(bytes.TrimRight(key.Id[:], "\x00")), &rec)
		if err != nil {
			return nil, err
		}
		list = append(list, *a)
	}
	return list, iter.Err()
}

// LinkPaths returns the pinned link paths of an attachment.
func (s *State) LinkPaths(id string) ([]string, error) {
	return filepath.Glob(filepath.Join(s.linkDir(id), "*"))
}

// VerifyLinks checks that an attachment has one live link per cgroup
// program, each attached to the recorded cgroup.
func (s *State) VerifyLinks(a *Attachment) error {
	if a.KeyedByNetNS() {
		if !a.NetNSAlive() {
			return fmt.Errorf("attachment %s: network namespace %s no longer exists", a.ID, a.NetNS)
		}
		return s.verifyNetNSLinks(a.ID)
	}
	// The kernel detaches a removed cgroup's links asynchronously, so the
	// directory is checked first.
	if !a.Cgroup().Exists() {
		return fmt.Errorf("attachment %s: cgroup %s no longer exists", a.ID, a.CgroupPath)
	}
	names, err := s.cgroupProgramNames()
	if err != nil {
		return err
	}
	for _, name := range names {
		path := filepath.Join(s.linkDir(a.ID), name)
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("attachment %s: link %s is not pinned: %w", a.ID, name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return fmt.Errorf("attachment %s: link %s: %w", a.ID, name, err)
		}
		cg := info.Cgroup()
		if cg == nil || cg.CgroupId != a.CgroupID {
			return fmt.Errorf("attachment %s: link %s is not attached to cgroup %s (was the cgroup removed?)", a.ID, name, a.CgroupPath)
		}
	}
	return nil
}

func (s *State) linkDir(id string) string {
	return filepath.Join(s.dir, "cgroups", id)
}

// put inserts or replaces a map entry, turning a full map into an error
// the operator can act on.
func (s *State) put(m *ebpf.Map, key, value any) error {
	err := m.Update(key, value, ebpf.UpdateAny)
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		info, _ := m.Info()
		name := "?"
		if info != nil {
			name = info.Name
		}
		return fmt.Errorf("BPF map %s is full (%d entries): detach unused attachments", name, m.MaxEntries())
	}
	if err != nil {
		return fmt.Errorf("update BPF map: %w", err)
	}
	return nil
}

// detachLinks detaches and unpins every link in dir, then removes dir.
// Each link is detached through its own fd so the cgroup sees the change
// at once (dropping only the pin releases the link asynchronously).
func detachLinks(dir string) error {
	paths, _ := filepath.Glob(filepath.Join(dir, "*"))
	var errs []error
	for _, path := range paths {
		errs = append(errs, bpfobj.DetachPinnedLink(path))
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func recordKey(id string) *bpfobj.PortcullisAttachmentId {
	var key bpfobj.PortcullisAttachmentId
	copy(key.Id[:], id)
	return &key
}

// undoStack collects the steps that reverse a partly done change.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }

func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}
