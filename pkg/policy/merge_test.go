package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func mustParse(t *testing.T, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMergeLayers(t *testing.T) {
	network := mustParse(t, `{"allowedPorts": ["1024-65535"], "portMappings": [{"containerPort": 80, "hostPort": 18080}]}`)
	named := mustParse(t, `{"allowedPorts": ["8080"]}`)
	runtime := &Policy{
		Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.2")},
		PortMappings: []PortMapping{
			{ContainerPort: 80, HostPort: 18080, Protocol: "TCP"}, // the network's, again
			{ContainerPort: 53, HostPort: 18053, Protocol: UDP, HostIP: "10.0.0.2"},
		},
	}
	p, err := Merge(Layer{"network", network}, Layer{"named", named}, Layer{"nil", nil}, Layer{"runtime", runtime})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AllowedPorts) != 1 || p.AllowedPorts[0] != (PortRange{8080, 8080}) {
		t.Errorf("allowedPorts %v: the named policy's should replace the network's", p.AllowedPorts)
	}
	if len(p.Addresses) != 1 || p.Addresses[0].String() != "10.0.0.2" {
		t.Errorf("addresses %v", p.Addresses)
	}
	if len(p.PortMappings) != 2 || p.PortMappings[1].Protocol != UDP {
		t.Errorf("portMappings %+v: want the two distinct mappings", p.PortMappings)
	}
	if len(network.AllowedPorts) != 1 || network.AllowedPorts[0].First != 1024 {
		t.Errorf("Merge changed a layer: %v", network.AllowedPorts)
	}
}

func TestMergeConflicts(t *testing.T) {
	a := mustParse(t, `{"portMappings": [{"containerPort": 80, "hostPort": 18080}]}`)
	for _, tc := range []struct {
		doc, want string
	}{
		{`{"portMappings": [{"containerPort": 80, "hostPort": 8080}]}`,
			"portMappings: containerPort 80/tcp is mapped to 18080 by conf and to 8080 by runtime"},
		{`{"portMappings": [{"containerPort": 81, "hostPort": 18080}]}`,
			"portMappings: hostPort 18080/tcp is the target of containerPort 80 in conf and of containerPort 81 in runtime"},
	} {
		_, err := Merge(Layer{"conf", a}, Layer{"runtime", mustParse(t, tc.doc)})
		if err == nil || err.Error() != tc.want {
			t.Errorf("Merge with %s: %v, want %q", tc.doc, err, tc.want)
		}
	}
	// The same port for two protocols is no conflict.
	if _, err := Merge(Layer{"conf", a}, Layer{"runtime", mustParse(t, `{"portMappings": [{"containerPort": 80, "hostPort": 18080, "protocol": "udp"}]}`)}); err != nil {
		t.Errorf("tcp and udp mappings of one port: %v", err)
	}
	// The merged policy is validated: a hostIP must be one of the addresses.
	_, err := Merge(Layer{"runtime", &Policy{PortMappings: []PortMapping{{ContainerPort: 1, HostPort: 2, HostIP: "192.0.2.1"}}}})
	if err == nil || !strings.Contains(err.Error(), "hostIP: 192.0.2.1 is not one of the policy's addresses") {
		t.Errorf("hostIP outside the addresses: %v", err)
	}
	// Published mappings (a container with a namespace of its own): a
	// hostIP is a host address, whatever the container's addresses.
	p, err := Merge(Layer{"publishing", &Policy{Published: true}},
		Layer{"runtime", &Policy{Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, PortMappings: []PortMapping{{ContainerPort: 1, HostPort: 2, HostIP: "192.0.2.1"}}}})
	if err != nil || !p.Published {
		t.Errorf("a published mapping with a host address as hostIP: %v %+v", err, p)
	}
	if _, err := Merge(Layer{"publishing", &Policy{Published: true}}, Layer{"runtime", &Policy{PortMappings: []PortMapping{{ContainerPort: 1, HostPort: 2, HostIP: "host"}}}}); err == nil {
		t.Error("a published mapping with hostIP \"host\" was accepted")
	}
}
