package state

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Records are decoded without the policy's strict decoder: what comes back
// must be exactly what was attached, every field, compressed or not, in
// its head alone or continued in chunks.
func TestRecordRoundTrip(t *testing.T) {
	var rules []string
	for i := 0; i < 200; i++ { // enough to need compression and chunks
		rules = append(rules, fmt.Sprintf(`{"action": "deny", "cidr": "10.%d.0.0/16", "ports": ["5432", "6000-6010"], "protocol": "tcp"}`, i))
	}
	// The second is a rich container's record: gzipped, it still fits its
	// 508-byte head, so it costs one small value.
	for n, doc := range []string{
		`{}`,
		`{"addresses": ["10.11.0.2", "fd11::2"], "allowedPorts": ["11000-11010", "9090"],
		  "portMappings": [{"containerPort": 80, "hostPort": 11080}, {"containerPort": 53, "hostPort": 11053, "protocol": "udp", "hostIP": "10.11.0.2"}],
		  "provides": [{"service": "db", "port": 5432}, {"service": "dns", "port": 53, "protocol": "udp"}],
		  "connectionLimits": {"perDestination": 10, "total": 100}, "groups": ["prod"],
		  "egress": [{"action": "deny", "group": "nonprod"}, {"action": "allow", "cidr": "0.0.0.0/0"}], "egressDefault": "deny"}`,
		`{"egress": [` + strings.Join(rules, ",") + `]}`,
	} {
		p, err := policy.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		a := &Attachment{ID: "rt", CgroupPath: "/sys/fs/cgroup/unified/rt", CgroupID: 11, Policy: *p,
			AttachedAt: time.Date(2026, 12, 1, 21, 0, 0, 0, time.UTC), Owner: "cni:net", NetNS: "/run/netns/rt"}
		rec, err := encodeRecord(a)
		if err != nil {
			t.Fatal(err)
		}
		if (len(rec.chunks) > 0) != (n == 2) {
			t.Errorf("policy %.60s...: %d chunks", doc, len(rec.chunks))
		}
		got, err := decodeRecordWith(a.ID, &rec.head, func(i int, c *chunk) error {
			*c = rec.chunks[i-1]
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, a) {
			t.Errorf("policy %.60s...: decoded\n%+v\nwant\n%+v", doc, got, a)
		}
	}
}
