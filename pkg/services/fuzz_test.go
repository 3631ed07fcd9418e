package services

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseDeclarations feeds the services.d / CNI "services" parser
// arbitrary documents: no panic, one-line errors, and accepted
// declarations survive a round trip through their own JSON.
func FuzzParseDeclarations(f *testing.F) {
	for _, seed := range []string{
		`{"name": "db", "frontends": ["127.0.0.1:5432"], "backends": ["10.19.0.2:5432/tcp"]}`,
		`[{"name": "web19", "frontends": ["10.19.0.10:80", "[fd19::10]:80"]}, {"name": "dns", "frontends": ["10.19.0.11:53/udp"]}]`,
		`{"name": "x", "frontends": []}`, `{"name": "a.b-c_d", "frontends": ["1.2.3.4:0"]}`, `[]`, `[{}]`,
		`{"name": "db", "frontends": ["127.0.0.1:5432"], "extra": 1}`, `{"name": "db", "frontends": ["0.0.0.0:1"]}`,
		`{"name": "db", "frontends": ["[fe80::1%eth0]:80"]}`, `{"name": "db", "frontends": ["1.2.3.4:80/sctp"]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		list, err := ParseDeclarations(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is more than one line: %q", err)
			}
			return
		}
		out, err := json.Marshal(list)
		if err != nil {
			t.Fatalf("marshal accepted declarations: %v", err)
		}
		again, err := ParseDeclarations(out)
		if err != nil {
			t.Fatalf("the declarations' own JSON %s is refused: %v", out, err)
		}
		if out2, _ := json.Marshal(again); string(out2) != string(out) {
			t.Fatalf("round trip changed the declarations: %s -> %s", out, out2)
		}
	})
}
