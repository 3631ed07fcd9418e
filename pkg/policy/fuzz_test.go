package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds the policy parser arbitrary documents: it must never
// panic, its errors must be one line, and a policy it accepts must
// validate and survive a round trip through its own JSON unchanged (what the CNI
// plugin's CHECK and the state's records rely on).
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"addresses":["127.0.0.2"],"allowedPorts":["1-2"],"portMappings":[{"containerPort":1,"hostPort":2}]}`,
		`{"addresses": ["127.0.0.2", "::1"], "allowedPorts": ["18000-18010", "9090", 53]}`,
		`{"portMappings": [{"containerPort": 80, "hostPort": 19080, "protocol": "TCP", "hostIP": "127.0.0.19"}], "addresses": ["127.0.0.19"]}`,
		`{"provides": [{"service": "db", "port": 5432, "protocol": "udp"}]}`,
		`{"addresses": ["::ffff:10.19.0.1"]}`, `{"allowedPorts": ["0"]}`, `{"allowedPorts": ["9-1"]}`,
		`{"Addresses": []}`, `{"addresses": null}`, `[]`, `null`, `{"allowedPorts": [1e3]}`, `{} {}`,
	} {
		f.Add([]byte(seed))
	}
	paths, _ := filepath.Glob("../../conf/policies/*.json")
	for _, path := range paths {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is more than one line: %q", err)
			}
			return
		}
		// Whatever parses must validate again unchanged.
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed policy fails validation: %v", err)
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("marshal an accepted policy: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("the policy's own JSON %s is refused: %v", out, err)
		}
		if out2, _ := json.Marshal(again); string(out2) != string(out) {
			t.Fatalf("round trip changed the policy: %s -> %s", out, out2)
		}
	})
}
