package policy

import (
	"encoding/json"
	"strings"
	"testing"
)

// The example document parses, and survives the JSON round trip
// the attachment record makes.
func TestParseEgressAndLimits(t *testing.T) {
	doc := `{
		"connectionLimits": {"perDestination": 1000, "total": 20000},
		"groups": ["prod"],
		"egress": [
			{"action": "deny",  "group": "nonprod"},
			{"action": "DENY",  "cidr": "10.0.0.0/8", "ports": ["5432", "6000-6010"], "protocol": "TCP"},
			{"action": "allow", "cidr": "fd00::/8"},
			{"action": "allow", "cidr": "0.0.0.0/0"}
		],
		"egressDefault": "allow"
	}`
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if p.ConnectionLimits.PerDestination != 1000 || p.ConnectionLimits.Total != 20000 {
		t.Errorf("connectionLimits = %+v", p.ConnectionLimits)
	}
	r := p.Egress[1]
	if r.Action != Deny || r.Protocol != TCP || r.CIDR.String() != "10.0.0.0/8" || len(r.Ports) != 2 || r.Ports[1] != (PortRange{6000, 6010}) {
		t.Errorf("egress[1] = %+v", r)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(data)
	if err != nil {
		t.Fatalf("re-parse %s: %v", data, err)
	}
	if again2, _ := json.Marshal(again); string(again2) != string(data) {
		t.Errorf("round trip changed the policy:\n%s\n%s", data, again2)
	}
	if !p.HasEgress() || (&Policy{}).HasEgress() || !(&Policy{EgressDefault: Deny}).HasEgress() {
		t.Error("HasEgress")
	}
}

func TestEgressV4MappedCIDRIsIPv4(t *testing.T) {
	p, err := Parse([]byte(`{"egress": [{"action": "deny", "cidr": "::ffff:10.1.0.0/112"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Egress[0].CIDR.String(); got != "10.1.0.0/16" {
		t.Errorf("cidr = %s, want 10.1.0.0/16", got)
	}
}

func TestEgressErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"egress": [{"action": "drop"}]}`, `egress[0].action: "drop" must be allow or deny`},
		{`{"egress": [{"action": "deny", "cdir": "10.0.0.0/8"}]}`, `egress[0]: unknown field "cdir"`},
		{`{"egress": [{"action": "deny"}, {"action": "deny", "cidr": "10.0.0.0/33"}]}`, `egress[1].cidr: "10.0.0.0/33" is not a CIDR prefix`},
		{`{"egress": [{"action": "deny", "cidr": "10.0.0.1"}]}`, `egress[0].cidr: "10.0.0.1" has no prefix length (write 10.0.0.1/32)`},
		{`{"egress": [{"action": "deny", "cidr": "10.0.0.1/8"}]}`, `egress[0].cidr: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)`},
		{`{"egress": [{"action": "deny", "ports": ["0"]}]}`, `egress[0].ports[0]: port range "0"`},
		{`{"egress": [{"action": "deny", "ports": [1,2,3,4,5,6,7,8,9]}]}`, `egress[0].ports: 9 ranges, at most 8`},
		{`{"egress": [{"action": "deny", "protocol": "sctp"}]}`, `egress[0].protocol: "sctp" is not tcp or udp`},
		{`{"egress": [{"action": "deny", "group": "no prod"}]}`, `egress[0].group: "no prod" must be`},
		{`{"egress": {"action": "deny"}}`, `egress`},
		{`{"egressDefault": "reject"}`, `egressDefault: "reject" must be allow or deny`},
		{`{"groups": ["prod", "prod"]}`, `groups[1]: group "prod" is listed twice`},
		{`{"groups": [""]}`, `groups[0]: "" must be`},
		{`{"connectionLimits": {"perDestination": -1}}`, `connectionLimits.perDestination`},
		{`{"connectionLimits": {"perdestination": 3}}`, `unknown field "perdestination" in connectionLimits`},
		{`{"connectionLimits": 3}`, `connectionLimits`},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.doc, err, tc.want)
		}
	}
}

func TestMergeEgressLastLayerWins(t *testing.T) {
	network := &Policy{Groups: []string{"nonprod"}, Egress: []EgressRule{{Action: Deny, Group: "prod"}}, ConnectionLimits: &ConnectionLimits{Total: 10}}
	named := &Policy{Groups: []string{"prod"}, EgressDefault: Deny}
	p, err := Merge(Layer{"network", network}, Layer{"named", named})
	if err != nil {
		t.Fatal(err)
	}
	if p.Groups[0] != "prod" || len(p.Egress) != 1 || p.EgressDefault != Deny || p.ConnectionLimits.Total != 10 {
		t.Errorf("merged = %+v", p)
	}
}
