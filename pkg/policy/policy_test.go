package policy

import (
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	p, err := Parse([]byte(`{
		"addresses": ["127.0.0.2", "::1"],
		"allowedPorts": ["18000-18010", "9090", 53],
		"portMappings": [{"containerPort": 80, "hostPort": 18080, "protocol": "TCP"},
		                 {"containerPort": 53, "hostPort": 18053, "protocol": "udp", "hostIP": ""}]
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := p.Address(false); a.String() != "127.0.0.2" {
		t.Errorf("IPv4 address = %s", a)
	}
	if a, _ := p.Address(true); a.String() != "::1" {
		t.Errorf("IPv6 address = %s", a)
	}
	want := []PortRange{{18000, 18010}, {9090, 9090}, {53, 53}}
	for i, r := range want {
		if p.AllowedPorts[i] != r {
			t.Errorf("allowedPorts[%d] = %v, want %v", i, p.AllowedPorts[i], r)
		}
	}
	if p.PortMappings[0].Protocol != TCP || p.PortMappings[1].Protocol.Number() != 17 {
		t.Errorf("protocols not normalised: %+v", p.PortMappings)
	}
}

func TestParseEmptyObjectAllowsEverything(t *testing.T) {
	p, err := Parse([]byte(`{}`))
	if err != nil || len(p.Addresses)+len(p.AllowedPorts)+len(p.PortMappings) != 0 {
		t.Fatalf("Parse({}) = %+v, %v", p, err)
	}
}

func TestParseV4MappedAddressIsIPv4(t *testing.T) {
	p, err := Parse([]byte(`{"addresses": ["::ffff:10.0.0.1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := p.Address(false); !ok || a.String() != "10.0.0.1" {
		t.Fatalf("v4-mapped address not treated as IPv4: %v", p.Addresses)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"addresses": ["127.0.0.2"]`, "malformed JSON"},
		{`not json`, "malformed JSON"},
		{``, "empty document"},
		{`{"adresses": []}`, `unknown field "adresses"`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 1, "extra": 1}]}`, `unknown field "extra"`},
		{`{"addresses": ["1.2.3"]}`, `addresses[0]: "1.2.3" is not an IP address`},
		{`{"addresses": ["10.0.0.0/24"]}`, `addresses[0]: "10.0.0.0/24" is a prefix`},
		{`{"addresses": ["0.0.0.0"]}`, `addresses[0]`},
		{`{"addresses": ["10.0.0.1", "10.0.0.2"]}`, `addresses[1]: 10.0.0.2: only one IPv4 address`},
		{`{"addresses": ["fe80::1%eth0"]}`, `zones are not supported`},
		{`{"allowedPorts": ["10-5"]}`, `allowedPorts[0]: port range "10-5": end is below start`},
		{`{"allowedPorts": ["70000"]}`, `allowedPorts[0]: port range "70000": "70000" is not a port`},
		{`{"allowedPorts": ["0"]}`, `allowedPorts[0]`},
		{`{"allowedPorts": [true]}`, `allowedPorts[0]`},
		{`{"allowedPorts": ["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}`, `at most 16`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 0}]}`, `portMappings[0].hostPort`},
		{`{"portMappings": [{"containerPort": 0, "hostPort": 80}]}`, `portMappings[0].containerPort`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 70000}]}`, `portMappings.hostPort`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 81, "protocol": "sctp"}]}`, `portMappings[0].protocol: "sctp"`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 81}, {"containerPort": 80, "hostPort": 82}]}`, `portMappings[1]: containerPort 80/tcp is mapped twice`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 81}, {"containerPort": 90, "hostPort": 81}]}`, `portMappings[1]: hostPort 81/tcp is the target of two mappings`},
		{`{"portMappings": [{"containerPort": 80, "hostPort": 81, "hostIP": "10.9.9.9"}]}`, `portMappings[0].hostIP: 10.9.9.9 is not one of the policy's addresses`},
		{`{} {}`, "trailing data"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) error = %v, want it to contain %q", tc.doc, err, tc.want)
		}
	}
}

func TestPortRangeRoundTrip(t *testing.T) {
	for _, s := range []string{"1", "65535", "8000-8010"} {
		r, err := ParsePortRange(s)
		if err != nil || r.String() != s {
			t.Errorf("ParsePortRange(%q) = %v, %v", s, r, err)
		}
	}
}

func TestKeysAreMatchedExactly(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"allowedports": ["1"]}`, `unknown field "allowedports"`},
		{`{"Addresses": ["127.0.0.2"]}`, `unknown field "Addresses"`},
		{`{"portMappings": [{"containerport": 80, "hostPort": 81}]}`, `unknown field "containerport" in portMappings[0]`},
	} {
		if _, err := Parse([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want %q", tc.doc, err, tc.want)
		}
	}
}

func TestDispatchField(t *testing.T) {
	p, err := Parse([]byte(`{"dispatch": [{"label": "web", "protocol": "TCP", "prefix": "127.0.7.0/24", "ports": "0-65535"}]}`))
	if err != nil || len(p.Dispatch) != 1 || p.Dispatch[0].Protocol != TCP || p.Dispatch[0].Ports != "0-65535" {
		t.Fatalf("%+v %v", p, err)
	}
	for doc, want := range map[string]string{
		`{"dispatch": [{"label": "web", "protocol": "tcp", "prefix": "127.0.7.1/24", "ports": "80"}]}`:                                                         "dispatch[0].prefix: ",
		`{"dispatch": [{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/24", "ports": "80-"}]}`:                                                        "dispatch[0].ports: ",
		`{"dispatch": [{"label": "", "protocol": "tcp", "prefix": "127.0.7.0/24", "ports": "80"}]}`:                                                            "dispatch[0].label: ",
		`{"dispatch": [{"label": "web", "protocol": "sctp", "prefix": "127.0.7.0/24", "ports": "80"}]}`:                                                        "dispatch[0].protocol: ",
		`{"dispatch": [{"label": "web", "protocol": "tcp", "prefix": "127.0.7.0/24", "ports": "80", "port": 1}]}`:                                              `unknown field "port"`,
		`{"dispatch": [{"label": "w", "protocol": "tcp", "prefix": "::/0", "ports": "1"}, {"label": "w", "protocol": "tcp", "prefix": "::/0", "ports": "1"}]}`: "dispatch[1]: the same binding as dispatch[0]",
	} {
		if _, err := Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
	}
}
