package state

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// A Migration fills a map of this build's layout (created empty from its
// spec, sized as the state's) from the pinned map of an older layout.
// Upgrade runs one for every map whose spec changed, or which has a
// migration registered for the state's layout version even though its
// spec did not change (a value whose fields were reinterpreted).
type Migration func(old, new *ebpf.Map) error

type migrationKey struct {
	name string
	from int
}

var migrations = map[migrationKey]Migration{}

// registerMigration registers the migration of map name from states of
// layout from (to this build's LayoutVersion); call it from an init
// function in this file. A map changed without a registered migration is
// carried over by copyMigration.
func registerMigration(name string, from int, m Migration) {
	migrations[migrationKey{name, from}] = m
}

func lookupMigration(name string, from int) Migration {
	return migrations[migrationKey{name, from}]
}

// Layout 1 to 2: nothing beyond what copyMigration and the records'
// re-encoding (migrateRecords) do. Register migrations for later layouts
// here, for example:
//
//	func init() {
//		registerMigration(bpfobj.PortcullisMapLimits, 2, func(old, new *ebpf.Map) error {
//			... decode each value of layout 2, write it in this build's format ...
//		})
//	}

// copyMigration carries entries over unchanged: the same key, the value
// zero-extended when the new value is longer (fields appended at the end
// read zero, the "not set" of every portcullis struct).
func copyMigration(old, new *ebpf.Map) error { return copyEntries(old, new, false) }

// copyEntries copies every entry of old into new (only those new lacks
// when onlyMissing: the second pass after the links moved).
func copyEntries(old, new *ebpf.Map, onlyMissing bool) error {
	switch old.Type() {
	case ebpf.SkStorage, ebpf.CGroupStorage, ebpf.PerCPUCGroupStorage, ebpf.InodeStorage, ebpf.TaskStorage:
		// Per-object storage cannot be listed: the new map starts
		// empty, as for a socket opened after the upgrade.
		return nil
	case ebpf.ProgramArray, ebpf.ArrayOfMaps, ebpf.HashOfMaps, ebpf.SockMap, ebpf.SockHash, ebpf.DevMap, ebpf.CPUMap, ebpf.XSKMap, ebpf.StructOpsMap:
		return fmt.Errorf("a %s holds file descriptors and is not copied: register a migration (docs/upgrade.md)", old.Type())
	}
	if old.KeySize() != new.KeySize() {
		return fmt.Errorf("key size %d changed to %d: register a migration (docs/upgrade.md)", old.KeySize(), new.KeySize())
	}
	if new.ValueSize() < old.ValueSize() {
		return fmt.Errorf("value size %d shrank to %d: register a migration (docs/upgrade.md)", old.ValueSize(), new.ValueSize())
	}
	flag := ebpf.UpdateAny
	if onlyMissing {
		if old.Type() == ebpf.Array || old.Type() == ebpf.PerCPUArray {
			return nil // every slot exists; the first copy holds them
		}
		flag = ebpf.UpdateNoExist
	}
	perCPU := old.Type() == ebpf.PerCPUHash || old.Type() == ebpf.PerCPUArray || old.Type() == ebpf.LRUCPUHash
	if perCPU != (new.Type() == ebpf.PerCPUHash || new.Type() == ebpf.PerCPUArray || new.Type() == ebpf.LRUCPUHash) {
		return fmt.Errorf("a %s became a %s: register a migration (docs/upgrade.md)", old.Type(), new.Type())
	}
	key := make([]byte, old.KeySize())
	if !perCPU {
		value := make([]byte, old.ValueSize())
		out := make([]byte, new.ValueSize())
		iter := old.Iterate()
		for iter.Next(&key, &value) {
			clear(out)
			copy(out, value)
			if err := new.Update(key, out, flag); err != nil && !(onlyMissing && errors.Is(err, ebpf.ErrKeyExist)) {
				return fmt.Errorf("copy an entry: %w", err)
			}
		}
		return iter.Err()
	}
	// Per-CPU values: one fixed-size array per possible CPU.
	oldValues := reflect.New(reflect.SliceOf(reflect.ArrayOf(int(old.ValueSize()), reflect.TypeOf(byte(0)))))
	newType := reflect.ArrayOf(int(new.ValueSize()), reflect.TypeOf(byte(0)))
	iter := old.Iterate()
	for iter.Next(&key, oldValues.Interface()) {
		in := oldValues.Elem()
		out := reflect.MakeSlice(reflect.SliceOf(newType), in.Len(), in.Len())
		for i := 0; i < in.Len(); i++ {
			reflect.Copy(out.Index(i).Slice(0, int(old.ValueSize())), in.Index(i).Slice(0, in.Index(i).Len()))
		}
		if err := new.Update(key, out.Interface(), flag); err != nil && !(onlyMissing && errors.Is(err, ebpf.ErrKeyExist)) {
			return fmt.Errorf("copy an entry: %w", err)
		}
	}
	return iter.Err()
}

// migrateRecords rewrites every attachment record in the record format of
// this build. A record of any layout so far is a u32 length and data,
// continued in chunks of the same form keyed by (id, 1..n) when the
// length exceeds the head's data: that is read whatever the sizes, the
// data expanded and decoded, and encoded again (encodeRecord).
func migrateRecords(oldHeads, oldChunks, newHeads, newChunks *ebpf.Map) error {
	dst := &State{records: newHeads, chunks: newChunks}
	key := make([]byte, oldHeads.KeySize())
	head := make([]byte, oldHeads.ValueSize())
	iter := oldHeads.Iterate()
	for iter.Next(&key, &head) {
		id := string(bytes.TrimRight(key, "\x00"))
		data, err := readOldRecord(id, head, oldChunks)
		if err != nil {
			return err
		}
		data, err = expand(data)
		if err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
		var r recordJSON
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
		a := r.Attachment
		a.Policy = policy.Policy(r.Policy)
		rec, err := encodeRecord(&a)
		if err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
		if err := dst.putRecord(id, rec); err != nil {
			return fmt.Errorf("record %s: %w", id, err)
		}
	}
	return iter.Err()
}

// readOldRecord reads the data of one record of an older layout.
func readOldRecord(id string, head []byte, chunks *ebpf.Map) ([]byte, error) {
	if len(head) < 4 {
		return nil, fmt.Errorf("record %s: value of %d bytes", id, len(head))
	}
	n := int(binary.NativeEndian.Uint32(head))
	if n > 64<<20 {
		return nil, fmt.Errorf("corrupt record %s: %d bytes", id, n)
	}
	data := append([]byte(nil), head[4:4+min(n, len(head)-4)]...)
	for i := 1; len(data) < n; i++ {
		if chunks == nil || i > 1<<16 {
			return nil, fmt.Errorf("corrupt record %s: chunk %d is missing", id, i)
		}
		c := make([]byte, chunks.ValueSize())
		if err := chunks.Lookup(chunkOf(id, i), &c); err != nil {
			return nil, fmt.Errorf("corrupt record %s: chunk %d: %w", id, i, err)
		}
		cn := int(binary.NativeEndian.Uint32(c))
		if cn == 0 || cn > len(c)-4 {
			return nil, fmt.Errorf("corrupt record %s: chunk %d", id, i)
		}
		data = append(data, c[4:4+cn]...)
	}
	return data[:n], nil
}
