package state

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Long records. The kernel's attachment record (its head, RECORD_MAX
// bytes) is small, since every attachment pays for it whole: a record
// longer than the head is gzipped (JSON never starts with gzip's magic
// bytes; a policy is mostly repetition), and what still does not fit
// continues in the record_chunks map under (attachment id, chunk 1..n),
// chunkSize bytes each. A chunked record's Len is the total length, more
// than its Data holds; its Data is the first part. Only userspace reads
// records, so the programs are unaffected.
const chunksMapName = "record_chunks"

// chunkSize is the data of one chunk: a chunk value is 1 KiB.
const chunkSize = 1020

// maxChunks bounds a record, chunks included, to 64 KiB compressed.
const maxChunks = 64

// maxRecordLen is the longest (compressed) record that fits.
const maxRecordLen = len(bpfobj.PortcullisRecord{}.Data) + maxChunks*chunkSize

// chunk is one record_chunks value.
type chunk struct {
	Len  uint32
	Data [chunkSize]byte
}

type chunkKey struct {
	ID  [attachmentIDMax]byte
	Idx uint32
}

func chunksSpec(maxEntries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       chunksMapName,
		Type:       ebpf.Hash,
		KeySize:    uint32(attachmentIDMax + 4),
		ValueSize:  uint32(4 + chunkSize),
		MaxEntries: maxEntries,
		// Allocated per long record only.
		Flags: unix.BPF_F_NO_PREALLOC,
	}
}

func chunkOf(id string, idx int) *chunkKey {
	k := &chunkKey{Idx: uint32(idx)}
	copy(k.ID[:], id)
	return k
}

// record is an encoded attachment: the record and its extra chunks.
type record struct {
	head   bpfobj.PortcullisRecord
	chunks []chunk
}

func encodeRecord(a *Attachment) (*record, error) {
	data, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	var r record
	size := len(r.head.Data)
	if len(data) > size {
		data = compress(data)
	}
	if len(data) > maxRecordLen {
		return nil, fmt.Errorf("policy too large: the attachment record is %d bytes compressed, at most %d fit (fewer egress rules?)", len(data), maxRecordLen)
	}
	r.head.Len = uint32(len(data))
	copy(r.head.Data[:], data)
	for rest := data[min(size, len(data)):]; len(rest) > 0; rest = rest[min(chunkSize, len(rest)):] {
		var c chunk
		c.Len = uint32(copy(c.Data[:], rest))
		r.chunks = append(r.chunks, c)
	}
	return &r, nil
}

// nChunks is how many extra chunks a record head says follow it.
func nChunks(head *bpfobj.PortcullisRecord) int {
	size := len(head.Data)
	if int(head.Len) <= size {
		return 0
	}
	return (int(head.Len) - size + chunkSize - 1) / chunkSize
}

// putRecord writes an attachment's record: its chunks first, so a reader
// never finds a head whose chunks are missing, and then chunks a shorter
// new record no longer needs are dropped.
func (s *State) putRecord(id string, r *record) error {
	var old bpfobj.PortcullisRecord
	had := 0
	if s.records.Lookup(recordKey(id), &old) == nil {
		had = nChunks(&old)
	}
	for i := range r.chunks {
		if err := s.putChunk(chunkOf(id, i+1), &r.chunks[i]); err != nil {
			return err
		}
	}
	if err := s.put(s.records, recordKey(id), &r.head); err != nil {
		return err
	}
	for i := len(r.chunks) + 1; i <= had; i++ {
		s.chunks.Delete(chunkOf(id, i))
	}
	return nil
}

func (s *State) putChunk(k *chunkKey, c *chunk) error {
	if s.chunks == nil {
		return errors.New("policy too large for this state's records (it predates long records: unload and load it)")
	}
	return s.put(s.chunks, k, c)
}

// deleteRecord removes an attachment's record and its chunks.
func (s *State) deleteRecord(id string) error {
	var head bpfobj.PortcullisRecord
	if err := s.records.Lookup(recordKey(id), &head); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return err
	}
	if err := s.records.Delete(recordKey(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	for i := 1; i <= nChunks(&head) && s.chunks != nil; i++ {
		s.chunks.Delete(chunkOf(id, i))
	}
	return nil
}

// decodeRecord reads the attachment of a record head (and its chunks).
func (s *State) decodeRecord(id string, head *bpfobj.PortcullisRecord) (*Attachment, error) {
	return decodeRecordWith(id, head, func(i int, c *chunk) error {
		if s.chunks == nil {
			return ebpf.ErrKeyNotExist
		}
		return s.chunks.Lookup(chunkOf(id, i), c)
	})
}

// decodeRecordWith decodes a record head, reading chunk i (1..n) with get.
func decodeRecordWith(id string, head *bpfobj.PortcullisRecord, get func(i int, c *chunk) error) (*Attachment, error) {
	size := len(head.Data)
	if int(head.Len) > maxRecordLen {
		return nil, errors.New("corrupt attachment record")
	}
	data := append([]byte(nil), head.Data[:min(int(head.Len), size)]...)
	for i := 1; i <= nChunks(head); i++ {
		var c chunk
		if get(i, &c) != nil || int(c.Len) > chunkSize {
			return nil, fmt.Errorf("corrupt attachment record %s: chunk %d is missing", id, i)
		}
		data = append(data, c.Data[:c.Len]...)
	}
	data, err := expand(data)
	if err != nil {
		return nil, fmt.Errorf("corrupt attachment record: %w", err)
	}
	var r recordJSON
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("corrupt attachment record: %w", err)
	}
	a := r.Attachment
	a.Policy = policy.Policy(r.Policy)
	return &a, nil
}

// recordPolicy is policy.Policy without its strict decoder: a record holds
// a policy validated when it was attached, and the strict checks were 60%
// of listing 10,000 records.
type recordPolicy policy.Policy

type recordJSON struct {
	Attachment
	Policy recordPolicy `json:"policy"` // shadows Attachment.Policy
}

func compress(data []byte) []byte {
	var buf bytes.Buffer
	w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

// maxRecord bounds what a gzipped record may expand to.
const maxRecord = 4 << 20

func expand(data []byte) ([]byte, error) {
	if len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		return data, nil
	}
	r, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(r, maxRecord+1))
	if err != nil {
		return nil, err
	}
	if len(out) > maxRecord {
		return nil, fmt.Errorf("expands beyond %d bytes", maxRecord)
	}
	return out, nil
}
