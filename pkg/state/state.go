// Package state owns portcullis' pinned state in bpffs: one set of programs
// and maps loaded once, and one folder of pinned bpf_links per attachment.
// There is no daemon; every tool opens the same pinned objects, and a flock
// on the state directory serialises writers.
//
// Layout under the state directory (default /sys/fs/bpf/portcullis):
//
//	progs/<name>          the loaded programs
//	maps/<name>           the maps (policies, port mappings, records, ...)
//	maps/attachment_keys  policy key (u64) -> attachment id, the index
//	maps/attachment_netns netns path -> number of attachments recording it
//	maps/program_table    name -> attach type of the programs each cgroup gets
//	maps/layout           the layout version and the build (layout.go)
//	cgroups/<id>/<name>   one bpf_link per program for attachment <id>
//	terminate/<name>      the termination iterators and their targets map
//	netns/...             the copy for namespace-keyed policies (netns.go)
//
// The state records its layout version (layout.go); Open refuses a state
// of another version, and portcullisctl upgrade (upgrade.go) carries one
// to this build's layout in place.
package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/kernel"
)

// DefaultDir is where the state is pinned unless PORTCULLIS_STATE_DIR says
// otherwise (tests use their own directory).
const DefaultDir = "/sys/fs/bpf/portcullis"

// ErrNotLoaded is returned by Open when no state is pinned.
var ErrNotLoaded = errors.New("portcullis is not loaded (run portcullisctl load)")

// Dir returns the state directory to use: $PORTCULLIS_STATE_DIR or
// DefaultDir.
func Dir() string {
	if d := os.Getenv("PORTCULLIS_STATE_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// State is an open, locked view of the pinned state.
type State struct {
	dir      string
	lock     *os.File
	policies *ebpf.Map
	portmaps *ebpf.Map
	records  *ebpf.Map
	index    *ebpf.Map
	netns    *ebpf.Map
	// programTable lists the cgroup programs (programs.go).
	programTable *ebpf.Map
	// chunks continue long records (records.go).
	chunks   *ebpf.Map
	counters counterMaps
}

// Dir is the state directory.
func (s *State) Dir() string { return s.dir }

// Load pins the programs and maps if they are not pinned yet. It builds the
// state in a temporary directory and renames it into place, so a crash
// leaves either nothing or a complete state. It reports whether it loaded.
func Load(dir string) (bool, error) {
	return LoadSized(dir, Sizes{})
}

// LoadSized is Load with the maps sized by sizes. An existing state keeps
// its sizes.
func LoadSized(dir string, sizes Sizes) (bool, error) {
	if err := sizes.Validate(); err != nil {
		return false, err
	}
	dir, err := CheckDir(dir)
	if err != nil {
		return false, err
	}
	// The common case, an existing state, takes no lock: the parent's
	// (/sys/fs/bpf) is shared with every other state on the host, and
	// waiting there for another's load cost an ADD up to a second.
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := prepareParent(dir); err != nil {
		return false, err
	}
	parent := filepath.Dir(dir)
	// The state directory does not exist yet, so creation is serialised
	// on its parent.
	unlock, err := flock(parent, unix.LOCK_EX)
	if err != nil {
		return false, err
	}
	defer unlock()
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}

	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return false, err
	}
	if err := sizes.apply(spec); err != nil {
		return false, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return false, explainLoadError(err)
	}
	defer coll.Close()

	tmp, err := os.MkdirTemp(parent, "portcullis-tmp-")
	if err != nil {
		return false, fmt.Errorf("create state: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	for _, sub := range []string{"progs", "maps", "cgroups"} {
		if err := os.Mkdir(filepath.Join(tmp, sub), 0o700); err != nil {
			return false, err
		}
	}
	for name, m := range coll.Maps {
		if strings.HasPrefix(name, ".") {
			continue // globals (.rodata): each copy of the programs has its own
		}
		if err := m.Pin(filepath.Join(tmp, "maps", name)); err != nil {
			return false, fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for _, ms := range userMapSpecs(spec.Maps[bpfobj.PortcullisMapPolicies].MaxEntries) {
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return false, fmt.Errorf("create map %s: %w", ms.Name, err)
		}
		err = m.Pin(filepath.Join(tmp, "maps", ms.Name))
		m.Close()
		if err != nil {
			return false, fmt.Errorf("pin map %s: %w", ms.Name, err)
		}
	}
	chunks, err := ebpf.NewMap(chunksSpec(spec.Maps[bpfobj.PortcullisMapAttachments].MaxEntries))
	if err != nil {
		return false, fmt.Errorf("create record chunks: %w", err)
	}
	defer chunks.Close()
	if err := chunks.Pin(filepath.Join(tmp, "maps", chunksMapName)); err != nil {
		return false, fmt.Errorf("pin map %s: %w", chunksMapName, err)
	}
	table, err := ebpf.NewMap(programsSpec())
	if err != nil {
		return false, fmt.Errorf("create program table: %w", err)
	}
	defer table.Close()
	if err := writePrograms(table, spec); err != nil {
		return false, err
	}
	if err := table.Pin(filepath.Join(tmp, "maps", programsMapName)); err != nil {
		return false, fmt.Errorf("pin map %s: %w", programsMapName, err)
	}
	layout, err := newLayoutMap()
	if err != nil {
		return false, err
	}
	defer layout.Close()
	if err := layout.Pin(filepath.Join(tmp, "maps", layoutMapName)); err != nil {
		return false, fmt.Errorf("pin map %s: %w", layoutMapName, err)
	}
	// Termination is optional: a kernel without bpf_sock_destroy still
	// gets a working state, and terminate says what is missing.
	_ = pinTermination(filepath.Join(tmp, "terminate"), coll.Maps)
	for name, p := range coll.Programs {
		if err := p.Pin(filepath.Join(tmp, "progs", name)); err != nil {
			return false, fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return false, fmt.Errorf("create state %s: %w", dir, err)
	}
	return true, nil
}

// Open locks the state directory (exclusive for writers, shared for
// readers) and opens the pinned objects.
func Open(dir string, exclusive bool) (*State, error) {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	dir, err := CheckDir(dir)
	if err != nil {
		return nil, err
	}
	lock, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoaded
	} else if err != nil {
		return nil, err
	}
	if err := Lock(lock, how); err != nil {
		lock.Close()
		return nil, err
	}
	s := &State{dir: dir, lock: lock}
	if err := checkLayout(dir); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.openObjects(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenOrLoad loads the state if it is absent and opens it for writing: the
// path every attach takes.
func OpenOrLoad(dir string) (*State, error) {
	if _, err := Load(dir); err != nil {
		return nil, err
	}
	return Open(dir, true)
}

func (s *State) openObjects() error {
	maps := map[string]**ebpf.Map{
		bpfobj.PortcullisMapPolicies:      &s.policies,
		bpfobj.PortcullisMapPortmaps:      &s.portmaps,
		bpfobj.PortcullisMapAttachments:   &s.records,
		indexMapName:                      &s.index,
		netnsMapName:                      &s.netns,
		programsMapName:                   &s.programTable,
		bpfobj.PortcullisMapTraffic:       &s.counters.traffic,
		bpfobj.PortcullisMapDecisions:     &s.counters.decisions,
		bpfobj.PortcullisMapDecisionsUser: &s.counters.userDecisions,
	}
	for name, dst := range maps {
		m, err := bpfobj.LoadPinnedMap(filepath.Join(s.dir, "maps", name))
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", name, err)
		}
		*dst = m
	}
	// A state loaded before long records has no chunk map: its records
	// are all short.
	s.chunks, _ = bpfobj.LoadPinnedMap(filepath.Join(s.dir, "maps", chunksMapName))
	// A state of a build with other record sizes (4 KiB heads before
	// they shrank) would fail every read with a size mismatch.
	if got, want := s.records.ValueSize(), uint32(binary.Size(bpfobj.PortcullisRecord{})); got != want {
		return fmt.Errorf("pinned map %s has %d-byte records, this build uses %d (state from another version? run portcullisctl unload --force && portcullisctl load)", bpfobj.PortcullisMapAttachments, got, want)
	}
	if s.chunks != nil && s.chunks.ValueSize() != uint32(binary.Size(chunk{})) {
		return fmt.Errorf("pinned map %s has %d-byte chunks, this build uses %d (state from another version? run portcullisctl unload --force && portcullisctl load)", chunksMapName, s.chunks.ValueSize(), binary.Size(chunk{}))
	}
	return nil
}

// Close releases the objects and the lock.
func (s *State) Close() {
	for _, m := range []*ebpf.Map{s.policies, s.portmaps, s.records, s.index, s.netns, s.programTable, s.chunks, s.counters.traffic, s.counters.decisions, s.counters.userDecisions} {
		if m != nil {
			m.Close()
		}
	}
	if s.lock != nil {
		s.lock.Close() // drops the flock
	}
}

// Unload removes the pinned state. With attachments present it refuses
// unless force is set, in which case it detaches them first.
func Unload(dir string, force bool) error {
	s, err := Open(dir, true)
	if errors.Is(err, ErrNotLoaded) {
		return nil
	} else if err != nil {
		if !force {
			return fmt.Errorf("%w (unload --force removes it anyway)", err)
		}
		// A state this build cannot read (another version's layout,
		// or a damaged one) must still be removable: every error
		// that names it tells the operator to unload it.
		return removeUnreadable(dir)
	}
	defer s.Close()
	list, err := s.Attachments()
	if err != nil {
		return err
	}
	if len(list) > 0 && !force {
		return fmt.Errorf("%d attachments exist (first: %s); detach them or use --force", len(list), list[0].ID)
	}
	for _, a := range list {
		if err := s.Detach(a.ID); err != nil {
			return err
		}
	}
	// Rename first so no other process opens a half-removed state.
	tmp := filepath.Join(filepath.Dir(dir), "portcullis-unload-"+strconv.Itoa(os.Getpid()))
	if err := os.Rename(dir, tmp); err != nil {
		return fmt.Errorf("unload: %w", err)
	}
	return os.RemoveAll(tmp)
}

// removeUnreadable removes a state Open cannot read: every bpf_link pinned
// anywhere in it is detached through its own fd first (so no cgroup or
// namespace keeps the programs once this returns; iterator links cannot be
// detached and go with their pins), then the folder goes.
func removeUnreadable(dir string) error {
	unlock, err := flock(dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("detach %s: %w", path, err))
			}
			l.Close()
		}
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unload %s: %w", dir, err)
	}
	tmp := filepath.Join(filepath.Dir(dir), "portcullis-unload-"+strconv.Itoa(os.Getpid()))
	if err := os.Rename(dir, tmp); err != nil {
		return fmt.Errorf("unload: %w", err)
	}
	return os.RemoveAll(tmp)
}

func flock(path string, how int) (func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := Lock(f, how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func explainLoadError(err error) error {
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) || errors.Is(err, unix.EPERM) {
		if missing := kernel.MissingCapabilities(); missing != "" {
			return fmt.Errorf("loading the portcullis programs needs %s (root has them); this process lacks %s: %w", kernel.LoadCapabilities, missing, err)
		}
	}
	if errors.As(err, &verr) {
		return fmt.Errorf("the kernel refused the portcullis programs (run portcullisctl doctor): %w", err)
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("loading BPF programs needs root (CAP_BPF and CAP_NET_ADMIN): %w", err)
	}
	return fmt.Errorf("load BPF programs: %w", err)
}

// now is replaced in tests.
var now = time.Now
