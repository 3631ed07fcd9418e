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
