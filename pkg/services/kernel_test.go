package services

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
)

// The Go mirrors must have the size of the C structs the maps hold.
func TestLayoutMatchesObject(t *testing.T) {
	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		key, value any
	}{
		{mapFrontends, frontendKey{}, frontendVal{}},
		{mapCounts, uint32(0), uint32(0)},
		{mapBackends, backendKey{}, backendVal{}},
		{mapNames, svcName{}, uint32(0)},
		{mapRegistry, uint64(0), registration{}},
		{mapListeners, listenerKey{}, listenerVal{}},
		{mapDrops, uint32(0), uint64(0)},
	} {
		m := spec.Maps[tc.name]
		if m == nil {
			t.Fatalf("map %s is not in the object", tc.name)
		}
		if k, v := binary.Size(tc.key), binary.Size(tc.value); uint32(k) != m.KeySize || uint32(v) != m.ValueSize {
			t.Errorf("%s: Go key/value %d/%d bytes, C %d/%d", tc.name, k, v, m.KeySize, m.ValueSize)
		}
	}
	if n := spec.Maps[mapCounts].MaxEntries; n != maxServiceID+1 {
		t.Errorf("svc_counts holds %d entries, Go assumes %d", n, maxServiceID+1)
	}
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5432":       "127.0.0.1:5432/tcp",
		"10.96.0.10:53/UDP":    "10.96.0.10:53/udp",
		"[fd00::10]:80/tcp":    "[fd00::10]:80/tcp",
		"[::ffff:10.0.0.1]:80": "10.0.0.1:80/tcp",
	} {
		e, err := ParseEndpoint(in)
		if err != nil || e.String() != want {
			t.Errorf("ParseEndpoint(%q) = %v, %v; want %s", in, e, err, want)
		}
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:0", "0.0.0.0:80", "1.2.3.4:80/sctp", "db:80", "[fe80::1%eth0]:80"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", bad)
		}
	}
}

func TestParseDeclarations(t *testing.T) {
	list, err := ParseDeclarations([]byte(`[{"name": "db", "frontends": ["127.0.0.1:5432"]}, {"name": "dns", "frontends": ["10.96.0.53:53/udp"], "backends": ["10.0.0.53:53/udp"]}]`))
	if err != nil || len(list) != 2 || list[1].Backends[0].String() != "10.0.0.53:53/udp" {
		t.Fatalf("%+v, %v", list, err)
	}
	for doc, want := range map[string]string{
		`{"name": "db"}`: "at least one frontend",
		`{"name": "d b", "frontends": ["127.0.0.1:1"]}`:               "service name",
		`{"name": "db", "frontends": ["x"]}`:                          "ADDR:PORT",
		`{"name": "db", "frontends": ["127.0.0.1:1"], "x": 1}`:        "unknown field",
		`{"name": "db", "frontends": ["127.0.0.1:1", "127.0.0.1:1"]}`: "twice",
	} {
		if _, err := ParseDeclarations([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error about %q", doc, err, want)
		}
	}
}
