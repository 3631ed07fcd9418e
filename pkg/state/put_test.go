package state

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

func TestPutIntoFullMapNamesTheMap(t *testing.T) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tiny", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create map (needs root): %v", err)
	}
	defer m.Close()
	s := &State{}
	if err := s.put(m, uint32(1), uint32(1)); err != nil {
		t.Fatal(err)
	}
	err = s.put(m, uint32(2), uint32(2))
	if err == nil || !strings.Contains(err.Error(), "BPF map tiny is full (1 entries)") {
		t.Fatalf("put into a full map: %v", err)
	}
}
