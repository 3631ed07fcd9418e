package state

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// The attachment index maps a policy key (the u64 the per-container map
// entries use: today the cgroup id) to the id of the attachment that holds
// it. It lets Attach refuse a key that is taken, and the tools find an
// attachment by cgroup, with one lookup instead of decoding every record.
// Only userspace reads it, so it is created here rather than in bpf/.
const indexMapName = "attachment_keys"

func indexSpec(maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       indexMapName,
		Type:       ebpf.Hash,
		KeySize:    8,
		ValueSize:  uint32(attachmentIDMax),
		MaxEntries: maxEntries,
		// Allocated per attachment: an empty state costs nothing.
		Flags: unix.BPF_F_NO_PREALLOC,
	}
}

// policyKey is the key of an attachment's entries in the per-container
// maps (policies, portmaps, the index).
func policyKey(a *Attachment) uint64 { return a.CgroupID }

// attachmentOfKey returns the id of the attachment holding a policy key,
// or "" when none does.
func (s *State) attachmentOfKey(key uint64) (string, error) {
	var id bpfobj.PortcullisAttachmentId
	err := s.index.Lookup(&key, &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("attachment index: %w", err)
	}
	return string(bytes.TrimRight(id.Id[:], "\x00")), nil
}

// AttachmentOfCgroup returns the id of the attachment of a cgroup (by its
// id), or "" when it has none.
func (s *State) AttachmentOfCgroup(cgroupID uint64) (string, error) {
	return s.attachmentOfKey(cgroupID)
}

// unindex removes key from the index if it still names id.
func (s *State) unindex(key uint64, id string) error {
	if holder, err := s.attachmentOfKey(key); err != nil || holder != id {
		return err
	}
	if err := s.index.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("attachment index: %w", err)
	}
	return nil
}

// The namespace list (maps/attachment_netns) counts the attachments of
// each recorded network namespace path, so that termination finds the
// namespaces to scan without decoding every record. Only userspace reads
// it.
const netnsMapName = "attachment_netns"

type netnsPathKey [256]byte

func netnsSpec(maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       netnsMapName,
		Type:       ebpf.Hash,
		KeySize:    uint32(len(netnsPathKey{})),
		ValueSize:  4,
		MaxEntries: maxEntries,
		Flags:      unix.BPF_F_NO_PREALLOC,
	}
}

// userMapSpecs are the maps Load creates beside the BPF object's.
func userMapSpecs(maxEntries uint32) []*ebpf.MapSpec {
	return []*ebpf.MapSpec{indexSpec(maxEntries), netnsSpec(maxEntries)}
}

func checkNetNSPath(path string) error {
	if len(path) >= len(netnsPathKey{}) {
		return fmt.Errorf("network namespace path %.40s...: at most %d characters", path, len(netnsPathKey{})-1)
	}
	return nil
}

// countNetNS adds delta to the attachments of a namespace path ("" is the
// caller's and is not counted).
func (s *State) countNetNS(path string, delta int) error {
	if path == "" {
		return nil
	}
	var key netnsPathKey
	copy(key[:], path)
	var n uint32
	if err := s.netns.Lookup(&key, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("namespace list: %w", err)
	}
	if next := int(n) + delta; next > 0 {
		return s.put(s.netns, &key, uint32(next))
	}
	if err := s.netns.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("namespace list: %w", err)
	}
	return nil
}

// NetNSPaths lists the network namespace paths attachments recorded,
// each once.
func (s *State) NetNSPaths() ([]string, error) {
	var (
		key   netnsPathKey
		n     uint32
		paths []string
	)
	iter := s.netns.Iterate()
	for iter.Next(&key, &n) {
		paths = append(paths, string(bytes.TrimRight(key[:], "\x00")))
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("namespace list: %w", err)
	}
	return paths, nil
}
