package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
)

// The program table (maps/program_table; maps/cgroup_programs in layout 1) names the programs every
// attachment attaches to its cgroup, with their attach types. Load writes
// it from the collection spec, so that opening the state, which every CNI
// and hook call does, needs no parsing of the BPF object (1.6 ms a time).
// Only userspace reads it.
const programsMapName = "program_table"

// programsMapNameV1 is its name in layout 1.
const programsMapNameV1 = "cgroup_programs"

// programRow is one slot of the table (an array: its empty slots are not
// entries a leftover check could mistake for a container's).
type programRow struct {
	Name   [64]byte
	Attach uint32
}

func programsSpec() *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       programsMapName,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(binary.Size(programRow{})),
		MaxEntries: 64,
	}
}

// writePrograms fills the program table with spec's cgroup programs.
func writePrograms(m *ebpf.Map, spec *ebpf.CollectionSpec) error {
	var slot uint32
	for name, p := range spec.Programs {
		switch p.Type {
		case ebpf.CGroupSockAddr, ebpf.CGroupSock, ebpf.CGroupSKB, ebpf.CGroupSockopt, ebpf.SockOps:
		default:
			continue
		}
		if name == progSockCreateUnmarked {
			continue // linked in sock_create's place (sockcreate.go)
		}
		row := programRow{Attach: uint32(p.AttachType)}
		if len(name) >= len(row.Name) || slot >= m.MaxEntries() {
			return fmt.Errorf("program %s does not fit the program table", name)
		}
		copy(row.Name[:], name)
		if err := m.Put(&slot, &row); err != nil {
			return fmt.Errorf("program table: %w", err)
		}
		slot++
	}
	return nil
}

// cgroupProgram is one row of the program table.
type cgroupProgram struct {
	name   string
	attach ebpf.AttachType
}

// cgroupPrograms lists the program table, sorted by name.
func (s *State) cgroupPrograms() ([]cgroupProgram, error) {
	rows, err := s.programRows()
	if err != nil {
		return nil, fmt.Errorf("program table: %w", err)
	}
	var list []cgroupProgram
	for _, row := range rows {
		if name := string(bytes.TrimRight(row.Name[:], "\x00")); name != "" {
			list = append(list, cgroupProgram{name, ebpf.AttachType(row.Attach)})
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	return list, nil
}

// programRows reads every row of the program table in one batch (an
// attach read it twice, and one lookup and one next-key per row were 130
// syscalls of a CNI ADD), or row by row where the kernel has no batches.
func (s *State) programRows() ([]programRow, error) {
	n := int(s.programTable.MaxEntries())
	keys := make([]uint32, n)
	rows := make([]programRow, n)
	var cursor ebpf.MapBatchCursor
	got, err := s.programTable.BatchLookup(&cursor, keys, rows, nil)
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		return rows[:got], nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return nil, err
	}
	rows = rows[:0]
	var (
		slot uint32
		row  programRow
	)
	iter := s.programTable.Iterate()
	for iter.Next(&slot, &row) {
		rows = append(rows, row)
	}
	return rows, iter.Err()
}

// cgroupProgramNames lists the programs attached to every cgroup.
func (s *State) cgroupProgramNames() ([]string, error) {
	list, err := s.cgroupPrograms()
	var names []string
	for _, p := range list {
		names = append(names, p.name)
	}
	return names, err
}

func (s *State) loadProgram(name string) (*ebpf.Program, error) {
	p, err := ebpf.LoadPinnedProgram(filepath.Join(s.dir, "progs", name), nil)
	if err != nil {
		return nil, fmt.Errorf("open pinned program %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", name, err)
	}
	return p, nil
}
