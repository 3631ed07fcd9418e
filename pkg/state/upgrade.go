package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// Upgrade carries a state of an older layout to this build's in place,
// with its containers attached and enforced throughout (docs/upgrade.md).
// It holds the state's exclusive lock and runs in three phases:
//
//  1. prepare: load this build's programs into STATE/_upgrade-tmp, reusing
//     every pinned map whose spec (type, key and value size, flags, the
//     state's size) is unchanged and migrating the others into new maps;
//     then hide the old program table (so older tools refuse the state)
//     and rename the folder to STATE/upgrade. A failure here leaves the old
//     state as it was.
//  2. swap: for every attachment, replace the program of each pinned link
//     with link.Update (BPF_LINK_UPDATE: the hook is never empty), attach
//     hooks new in this layout, detach hooks it no longer has; the same for
//     the namespace-keyed links; then copy entries the old programs added
//     to migrated maps meanwhile.
//  3. commit: rename the staged maps and programs over the old ones, and
//     the layout record last; remove STATE/upgrade.
//
// A failure in phase 2 or 3 leaves each hook with either the old or the
// new program, and STATE/upgrade in place: every tool refuses the state
// until Upgrade, run again, resumes from phase 2 (each step is idempotent).
func Upgrade(dir string) (*UpgradeReport, error) {
	start := time.Now()
	dir, err := CheckDir(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoaded
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := Lock(f, unix.LOCK_EX); err != nil {
		return nil, err
	}
	l, err := ReadLayout(dir)
	if err != nil {
		return nil, err
	}
	r := &UpgradeReport{StateDir: dir, From: l.Version, To: LayoutVersion, FromBuild: l.Build, Build: Build(), Resumed: l.Upgrading}
	if l.Version > LayoutVersion {
		return nil, &LayoutError{Dir: dir, State: l}
	}
	if l.Version == LayoutVersion && !l.Upgrading {
		r.UpToDate = true
		return r, nil
	}
	u := &upgrader{dir: dir, from: l.Version, report: r, failAfter: -1}
	if v := os.Getenv(upgradeFailEnv); v != "" {
		if u.failAfter, err = strconv.Atoi(v); err != nil {
			return nil, fmt.Errorf("%s=%q: want a number", upgradeFailEnv, v)
		}
	}
	phase := time.Now()
	lap := func() time.Duration {
		d := time.Since(phase)
		phase = time.Now()
		return d
	}
	if !l.Upgrading {
		if err := u.prepare(); err != nil {
			return nil, fmt.Errorf("upgrade %s: %w (nothing changed: the state is still layout %d)", dir, err, l.Version)
		}
	}
	r.Prepare = lap()
	if err := u.swap(); err != nil {
		return nil, fmt.Errorf("upgrade %s: %w (every hook runs the old or the new program; run portcullisctl upgrade again to finish)", dir, err)
	}
	r.Swap = lap()
	if err := u.commit(); err != nil {
		return nil, fmt.Errorf("upgrade %s: %w (run portcullisctl upgrade again to finish)", dir, err)
	}
	r.Commit = lap()
	r.Duration = time.Since(start)
	return r, nil
}

// upgradeFailEnv makes Upgrade fail after that many link updates: a test
// hook for the resume after a failure half way (never set it otherwise).
const upgradeFailEnv = "PORTCULLIS_TEST_UPGRADE_FAIL_AFTER"

// UpgradeReport says what an upgrade did.
type UpgradeReport struct {
	StateDir  string `json:"stateDir"`
	From      int    `json:"from"`
	To        int    `json:"to"`
	FromBuild string `json:"fromBuild,omitempty"`
	Build     string `json:"build"`
	UpToDate  bool   `json:"upToDate,omitempty"`
	// Resumed: an earlier upgrade had stopped half way.
	Resumed bool `json:"resumed,omitempty"`
	// Maps by what happened to them (prepare only; empty when resumed).
	Reused   []string `json:"reusedMaps,omitempty"`
	Migrated []string `json:"migratedMaps,omitempty"`
	Created  []string `json:"createdMaps,omitempty"`
	Removed  []string `json:"removedMaps,omitempty"`
	// Attachments whose links were swapped; links updated in place,
	// attached for new hooks, detached for hooks that are gone.
	Attachments  int           `json:"attachments"`
	LinksUpdated int           `json:"linksUpdated"`
	LinksAdded   int           `json:"linksAdded"`
	LinksRemoved int           `json:"linksRemoved"`
	Duration     time.Duration `json:"durationNs"`
	// The phases (see Upgrade).
	Prepare time.Duration `json:"prepareNs"`
	Swap    time.Duration `json:"swapNs"`
	Commit  time.Duration `json:"commitNs"`
}

type upgrader struct {
	dir       string
	from      int
	report    *UpgradeReport
	failAfter int // -1: never
	updates   int
}

func (u *upgrader) staging(parts ...string) string {
	return filepath.Join(append([]string{u.dir, upgradeDirName}, parts...)...)
}

func (u *upgrader) path(parts ...string) string {
	return filepath.Join(append([]string{u.dir}, parts...)...)
}

// mapPlan is what prepare does with one map.
type mapPlan struct {
	spec *ebpf.MapSpec
	old  *ebpf.Map // nil: new in this layout
}

// prepare stages the new objects in STATE/upgrade (see Upgrade).
func (u *upgrader) prepare() (err error) {
	tmp := u.path("_upgrade-tmp")
	os.RemoveAll(tmp) // a crashed prepare's: only maps and programs, no links
	for _, sub := range []string{"maps", "progs"} {
		if err := os.MkdirAll(filepath.Join(tmp, sub), 0o700); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return err
	}
	var opened []*ebpf.Map
	defer func() {
		for _, m := range opened {
			m.Close()
		}
	}()
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(u.path("maps", name), nil)
		if err != nil {
			return nil
		}
		opened = append(opened, m)
		return m
	}

	// The maps of the BPF object, then those Load creates itself.
	plans := map[string]*mapPlan{}
	var names []string
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // globals: each copy of the programs has its own
		}
		plans[name] = &mapPlan{spec: ms}
		names = append(names, name)
	}
	for _, ms := range append(userMapSpecs(0), chunksSpec(0)) {
		plans[ms.Name] = &mapPlan{spec: ms}
		names = append(names, ms.Name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := plans[name]
		p.old = open(name)
		p.spec.MaxEntries = u.size(name, p.spec, p.old, open)
	}

	// Records are JSON split over attachments and record_chunks: when
	// either map changed, both are rewritten from the decoded records.
	recs, chunks := plans[bpfobj.PortcullisMapAttachments], plans[chunksMapName]
	recordsChanged := recs.old == nil || recs.spec.Compatible(recs.old) != nil || chunks.old == nil || chunks.spec.Compatible(chunks.old) != nil

	replace := map[string]*ebpf.Map{}
	for _, name := range names {
		p := plans[name]
		reuse := p.old != nil && p.spec.Compatible(p.old) == nil && lookupMigration(name, u.from) == nil
		if name == bpfobj.PortcullisMapAttachments || name == chunksMapName {
			reuse = !recordsChanged
		}
		if reuse {
			replace[name] = p.old
			u.report.Reused = append(u.report.Reused, name)
			continue
		}
		m, err := ebpf.NewMap(p.spec)
		if err != nil {
			return fmt.Errorf("create map %s: %w", name, err)
		}
		opened = append(opened, m)
		replace[name] = m
		if p.old == nil {
			u.report.Created = append(u.report.Created, name)
		} else {
			u.report.Migrated = append(u.report.Migrated, name)
		}
	}
	if recordsChanged && recs.old != nil {
		if err := migrateRecords(recs.old, chunks.old, replace[bpfobj.PortcullisMapAttachments], replace[chunksMapName]); err != nil {
			return fmt.Errorf("migrate the attachment records: %w", err)
		}
	}
	for _, name := range names {
		p := plans[name]
		if p.old == nil || replace[name] == p.old || name == bpfobj.PortcullisMapAttachments || name == chunksMapName {
			continue
		}
		mig := lookupMigration(name, u.from)
		if mig == nil {
			mig = copyMigration
		}
		if err := mig(p.old, replace[name]); err != nil {
			return fmt.Errorf("migrate map %s from layout %d: %w", name, u.from, err)
		}
	}
	for name, m := range replace {
		if m == plans[name].old {
			continue
		}
		if err := m.Pin(filepath.Join(tmp, "maps", name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for _, ms := range []*ebpf.MapSpec{programsSpec(), layoutSpec()} {
		if p, err := filepath.Glob(u.path("maps", ms.Name)); err == nil && len(p) == 0 {
			u.report.Created = append(u.report.Created, ms.Name)
		}
	}
	table, err := ebpf.NewMap(programsSpec())
	if err != nil {
		return fmt.Errorf("create program table: %w", err)
	}
	defer table.Close()
	if err := writePrograms(table, spec); err != nil {
		return err
	}
	if err := table.Pin(filepath.Join(tmp, "maps", programsMapName)); err != nil {
		return err
	}
	layout, err := newLayoutMap()
	if err != nil {
		return err
	}
	defer layout.Close()
	if err := layout.Pin(filepath.Join(tmp, "maps", layoutMapName)); err != nil {
		return err
	}

	// The programs, sharing the carried-over maps.
	coll, err := loadSharing(spec, replace)
	if err != nil {
		return err
	}
	defer coll.Close()
	for name, p := range coll.Programs {
		if err := p.Pin(filepath.Join(tmp, "progs", name)); err != nil {
			return fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	// The namespace copy, when namespace-keyed attachments use it.
	if cg, err := netnsLinksCgroup(u.path("netns", "links")); err != nil {
		return err
	} else if cg != 0 {
		if err := u.prepareNetNSCopy(filepath.Join(tmp, "netns-progs"), replace); err != nil {
			return err
		}
	}
	// The termination iterators read policies, sock_owners, decisions.
	if _, err := os.Stat(u.path("terminate")); err == nil {
		_ = pinTermination(filepath.Join(tmp, "terminate"), replace)
	}
	// Maps of the old layout this one no longer has.
	pinned, _ := filepath.Glob(u.path("maps", "*"))
	for _, path := range pinned {
		name := filepath.Base(path)
		if plans[name] == nil && name != programsMapName && name != layoutMapName {
			u.report.Removed = append(u.report.Removed, name)
		}
	}

	// From here older tools must not act: hide the old program table
	// (every build opens it), then make the staging visible.
	for _, name := range []string{programsMapNameV1, programsMapName} {
		from, to := u.path("maps", name), filepath.Join(tmp, "old-"+name)
		if _, statErr := os.Stat(from); statErr != nil {
			continue
		}
		if err = os.Rename(from, to); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				os.Rename(to, from) // the old state stays usable
			}
		}()
	}
	if err := os.Rename(tmp, u.staging()); err != nil {
		return err
	}
	return nil
}

// size is the max_entries of a map in the upgraded state: the state's own
// (sizes are fixed at load), or for a map new in this layout the size of
// a pinned map sized by the same load flag.
func (u *upgrader) size(name string, spec *ebpf.MapSpec, old *ebpf.Map, open func(string) *ebpf.Map) uint32 {
	if old != nil {
		return old.MaxEntries()
	}
	switch name {
	case indexMapName, netnsMapName:
		name = bpfobj.PortcullisMapPolicies
	case chunksMapName:
		name = bpfobj.PortcullisMapAttachments
	}
	for _, g := range (Sizes{}).maps() {
		for _, member := range g.names {
			if member != name {
				continue
			}
			for _, sibling := range g.names {
				if m := open(sibling); m != nil {
					return m.MaxEntries()
				}
			}
		}
	}
	return spec.MaxEntries
}

// prepareNetNSCopy loads the namespace copy of the programs (netns.go)
// against the carried-over maps and pins it in dir.
func (u *upgrader) prepareNetNSCopy(dir string, replace map[string]*ebpf.Map) error {
	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return err
	}
	table, err := ebpf.NewMap(programsSpec())
	if err != nil {
		return err
	}
	defer table.Close()
	if err := writePrograms(table, spec); err != nil {
		return err
	}
	list, err := netnsProgramsOf(table)
	if err != nil {
		return err
	}
	if err := asNetnsCopy(spec, list); err != nil {
		return err
	}
	for name, m := range replace {
		if ms := spec.Maps[name]; ms != nil {
			ms.MaxEntries = m.MaxEntries()
		}
	}
	coll, err := loadSharing(spec, replace)
	if err != nil {
		return err
	}
	defer coll.Close()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	for name, p := range coll.Programs {
		if err := p.Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin namespace program %s: %w", name, err)
		}
	}
	return nil
}

// stagedOrCommitted opens the staged object of a name, or the committed
// one when a resumed commit already moved it.
func (u *upgrader) stagedOrCommitted(staged, committed string) string {
	if _, err := os.Stat(staged); err == nil {
		return staged
	}
	return committed
}

// swap moves every hook to the new programs (see Upgrade).
func (u *upgrader) swap() error {
	tablePath := u.stagedOrCommitted(u.staging("maps", programsMapName), u.path("maps", programsMapName))
	table, err := ebpf.LoadPinnedMap(tablePath, nil)
	if err != nil {
		return fmt.Errorf("open the new program table: %w", err)
	}
	defer table.Close()
	progs, err := programsOf(table)
	if err != nil {
		return err
	}
	load := func(dirs [2]string, name string) (*ebpf.Program, error) {
		path := u.stagedOrCommitted(filepath.Join(dirs[0], name), filepath.Join(dirs[1], name))
		p, err := ebpf.LoadPinnedProgram(path, nil)
		if err != nil {
			return nil, fmt.Errorf("open new program %s: %w", name, err)
		}
		return p, nil
	}
	cgroupProgs := map[string]*ebpf.Program{}
	for _, p := range progs {
		prog, err := load([2]string{u.staging("progs"), u.path("progs")}, p.name)
		if err != nil {
			return err
		}
		defer prog.Close()
		cgroupProgs[p.name] = prog
	}
	// An attachment whose policy marks nothing links the unmarked
	// sock_create (sockcreate.go), as a new attachment would.
	unmarked, err := load([2]string{u.staging("progs"), u.path("progs")}, progSockCreateUnmarked)
	if err != nil {
		return err
	}
	defer unmarked.Close()
	unmarkedProgs := map[string]*ebpf.Program{}
	for name, prog := range cgroupProgs {
		unmarkedProgs[name] = prog
	}
	unmarkedProgs[progSockCreate] = unmarked
	view, err := u.recordsView()
	if err != nil {
		return err
	}
	defer view.Close()

	// One batch read of the records, not one lookup per attachment.
	records := map[string]*Attachment{}
	if list, err := view.Attachments(); err == nil {
		for i := range list {
			records[list[i].ID] = &list[i]
		}
	}

	folders, _ := filepath.Glob(u.path("cgroups", "*"))
	for _, folder := range folders {
		id := filepath.Base(folder)
		if strings.HasPrefix(id, "_") {
			continue // a crashed attach's; the next detach removes it
		}
		a := records[id]
		if a == nil {
			a, _ = view.Get(id)
		}
		cgPath := func() string {
			if a != nil {
				return a.CgroupPath
			}
			return ""
		}
		linked := cgroupProgs
		if a != nil && !marksSockets(&a.Policy) {
			linked = unmarkedProgs
		}
		if err := u.swapFolder(folder, progs, linked, cgPath); err != nil {
			return fmt.Errorf("attachment %s: %w", id, err)
		}
		u.report.Attachments++
	}

	// The namespace-keyed links on their common ancestor cgroup.
	if cg, err := netnsLinksCgroup(u.path("netns", "links")); err != nil {
		return err
	} else if cg != 0 {
		list, err := netnsProgramsOf(table)
		if err != nil {
			return err
		}
		netnsProgs := map[string]*ebpf.Program{}
		for _, p := range list {
			prog, err := load([2]string{u.staging("netns-progs"), u.path("netns", "progs")}, p.name)
			if err != nil {
				return err
			}
			defer prog.Close()
			netnsProgs[p.name] = prog
		}
		path := func() string {
			p, _ := cgroupPathOfLinks(u.path("netns", "links"))
			return p
		}
		if err := u.swapFolder(u.path("netns", "links"), list, netnsProgs, path); err != nil {
			return fmt.Errorf("namespace links: %w", err)
		}
	}

	// Entries the old programs added to migrated maps since prepare
	// copied them (connections counted, peers translated).
	staged, _ := filepath.Glob(u.staging("maps", "*"))
	for _, path := range staged {
		name := filepath.Base(path)
		if name == programsMapName || name == layoutMapName || name == bpfobj.PortcullisMapAttachments || name == chunksMapName || lookupMigration(name, u.from) != nil {
			continue
		}
		old, err := ebpf.LoadPinnedMap(u.path("maps", name), nil)
		if err != nil {
			continue // new in this layout, or committed already
		}
		nw, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			old.Close()
			return err
		}
		err = copyEntries(old, nw, true)
		old.Close()
		nw.Close()
		if err != nil {
			return fmt.Errorf("migrate map %s: %w", name, err)
		}
	}
	return nil
}

// swapFolder gives a folder of pinned cgroup links the new programs: an
// in-place update of each link whose hook still exists, a new link for
// each new hook (on the cgroup cgroupOf finds), then the removal of hooks
// that are gone.
func (u *upgrader) swapFolder(folder string, want []cgroupProgram, progs map[string]*ebpf.Program, cgroupOf func() string) error {
	wanted := map[string]bool{}
	for _, p := range want {
		wanted[p.name] = true
	}
	paths, _ := filepath.Glob(filepath.Join(folder, "*"))
	have := map[string]bool{}
	var gone []string
	for _, path := range paths {
		name := filepath.Base(path)
		if !wanted[name] {
			gone = append(gone, path)
			continue
		}
		have[name] = true
		if u.failAfter >= 0 && u.updates >= u.failAfter {
			return fmt.Errorf("failure injected by %s after %d link updates", upgradeFailEnv, u.updates)
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("open link %s: %w", name, err)
		}
		err = l.Update(progs[name])
		l.Close()
		if errors.Is(err, unix.ENOLINK) {
			continue // its cgroup was removed: it enforces nothing any more
		} else if err != nil {
			return fmt.Errorf("update link %s (BPF_LINK_UPDATE, kernel 5.7+): %w", name, err)
		}
		u.updates++
		u.report.LinksUpdated++
	}
	cgPath := ""
	for _, p := range want {
		if have[p.name] {
			continue
		}
		if cgPath == "" {
			cgPath = cgroupOf()
		}
		if _, err := os.Stat(cgPath); cgPath == "" || err != nil {
			continue // the cgroup is gone
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgPath, Attach: p.attach, Program: progs[p.name]})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", p.name, cgPath, err)
		}
		err = l.Pin(filepath.Join(folder, p.name))
		l.Close()
		if err != nil {
			return fmt.Errorf("pin link %s: %w", p.name, err)
		}
		u.report.LinksAdded++
	}
	for _, path := range gone {
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			l.Detach()
			l.Unpin()
			l.Close()
		} else {
			os.Remove(path)
		}
		u.report.LinksRemoved++
	}
	return nil
}

// cgroupPathOfLinks finds the path of the cgroup a folder's links are
// attached to, for attaching a new hook beside them: the namespace links
// sit on the cgroup v2 root or a common ancestor given at attach.
func cgroupPathOfLinks(folder string) (string, error) {
	id, err := netnsLinksCgroup(folder)
	if err != nil || id == 0 {
		return "", err
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return "", err
	}
	var found string
	filepath.WalkDir(mount, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil && st.Ino == id {
			found = path
			return filepath.SkipAll
		}
		if strings.Count(strings.TrimPrefix(path, mount), "/") >= 3 {
			return filepath.SkipDir // the namespace programs sit near the root
		}
		return nil
	})
	return found, nil
}

// recordsView reads the attachment records of the upgraded layout (staged
// or committed) to find each attachment's cgroup.
func (u *upgrader) recordsView() (*State, error) {
	v := &State{dir: u.dir}
	var err error
	if v.records, err = ebpf.LoadPinnedMap(u.stagedOrCommitted(u.staging("maps", bpfobj.PortcullisMapAttachments), u.path("maps", bpfobj.PortcullisMapAttachments)), nil); err != nil {
		return nil, fmt.Errorf("open the attachment records: %w", err)
	}
	v.chunks, _ = ebpf.LoadPinnedMap(u.stagedOrCommitted(u.staging("maps", chunksMapName), u.path("maps", chunksMapName)), nil)
	return v, nil
}

// commit moves the staged objects into place, the layout record last.
func (u *upgrader) commit() error {
	staged, _ := filepath.Glob(u.staging("maps", "*"))
	for _, path := range staged {
		name := filepath.Base(path)
		if name == layoutMapName {
			continue
		}
		if err := os.Rename(path, u.path("maps", name)); err != nil {
			return err
		}
	}
	for _, name := range u.report.Removed {
		os.Remove(u.path("maps", name))
	}
	// A resumed commit no longer knows the removed maps: the spec says
	// which maps this layout has.
	if err := u.removeStale(); err != nil {
		return err
	}
	progs, _ := filepath.Glob(u.staging("progs", "*"))
	for _, path := range progs {
		if err := os.Rename(path, u.path("progs", filepath.Base(path))); err != nil {
			return err
		}
	}
	if _, err := os.Stat(u.staging("netns-progs")); err == nil {
		os.RemoveAll(u.staging("old-netns-progs"))
		if _, err := os.Stat(u.path("netns", "progs")); err == nil {
			if err := os.Rename(u.path("netns", "progs"), u.staging("old-netns-progs")); err != nil {
				return err
			}
		}
		if err := os.Rename(u.staging("netns-progs"), u.path("netns", "progs")); err != nil {
			return err
		}
	} else if cg, _ := netnsLinksCgroup(u.path("netns", "links")); cg == 0 {
		// A copy no link uses still reads the old maps: the next
		// namespace-keyed attach loads a new one.
		os.RemoveAll(u.path("netns", "progs"))
	}
	if _, err := os.Stat(u.staging("terminate")); err == nil {
		os.RemoveAll(u.staging("old-terminate"))
		if _, err := os.Stat(u.path("terminate")); err == nil {
			if err := os.Rename(u.path("terminate"), u.staging("old-terminate")); err != nil {
				return err
			}
		}
		if err := os.Rename(u.staging("terminate"), u.path("terminate")); err != nil {
			return err
		}
	}
	if err := removeNetNSTraffic(u.dir); err != nil {
		return err
	}
	if err := u.runHooks(); err != nil {
		return err
	}
	if _, err := os.Stat(u.staging("maps", layoutMapName)); err == nil {
		if err := os.Rename(u.staging("maps", layoutMapName), u.path("maps", layoutMapName)); err != nil {
			return err
		}
	}
	return os.RemoveAll(u.staging())
}

// An UpgradeHook lets a package that pins objects of its own using the
// state's maps follow an upgrade (pkg/dispatch: its programs read maps of
// its own, its links are per namespace). It runs once the new maps and
// programs are in place, before the layout record is written, with the
// state open (its lock is Upgrade's); from is the state's old layout. It
// must be idempotent: a failure leaves the upgrade half way, and the next
// run calls it again.
type UpgradeHook func(s *State, from int) error

var upgradeHooks []UpgradeHook

// RegisterUpgradeHook adds a hook; call it from an init function.
func RegisterUpgradeHook(h UpgradeHook) { upgradeHooks = append(upgradeHooks, h) }

func (u *upgrader) runHooks() error {
	if len(upgradeHooks) == 0 {
		return nil
	}
	s := &State{dir: u.dir}
	defer s.Close()
	if err := s.openObjects(); err != nil {
		return err
	}
	for _, h := range upgradeHooks {
		if err := h(s, u.from); err != nil {
			return err
		}
	}
	return nil
}

// removeStale removes pinned maps and programs this layout does not have.
func (u *upgrader) removeStale() error {
	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return err
	}
	keepMaps := map[string]bool{programsMapName: true, layoutMapName: true, chunksMapName: true}
	for _, ms := range userMapSpecs(0) {
		keepMaps[ms.Name] = true
	}
	for name := range spec.Maps {
		keepMaps[name] = true
	}
	pinned, _ := filepath.Glob(u.path("maps", "*"))
	for _, path := range pinned {
		if !keepMaps[filepath.Base(path)] {
			os.Remove(path)
		}
	}
	pinned, _ = filepath.Glob(u.path("progs", "*"))
	for _, path := range pinned {
		if spec.Programs[filepath.Base(path)] == nil {
			os.Remove(path)
		}
	}
	return nil
}

// programsOf lists a program table (programs.go), sorted by name.
func programsOf(table *ebpf.Map) ([]cgroupProgram, error) {
	return (&State{programTable: table}).cgroupPrograms()
}

// loadSharing loads spec with those of the maps of replace it declares
// in place of its own (the carried-over maps).
func loadSharing(spec *ebpf.CollectionSpec, replace map[string]*ebpf.Map) (*ebpf.Collection, error) {
	own := map[string]*ebpf.Map{}
	for name, m := range replace {
		if spec.Maps[name] != nil {
			own[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: own})
	if err != nil {
		return nil, explainLoadError(err)
	}
	return coll, nil
}

// netnsProgramsOf lists the namespace copy's programs of a table.
func netnsProgramsOf(table *ebpf.Map) ([]cgroupProgram, error) {
	return (&State{programTable: table}).netnsProgramList()
}
