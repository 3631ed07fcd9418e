package cni

import (
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

const prevResult = `{"cniVersion": "1.0.0",
	"interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/c"}],
	"ips": [{"address": "10.1.0.1/24", "interface": 0},
	        {"address": "10.1.0.2/24", "interface": 1},
	        {"address": "10.1.0.3/24", "interface": 1},
	        {"address": "fd00::2/64", "interface": 1}]}`

func conf(extra string) []byte {
	doc := `{"cniVersion": "1.0.0", "name": "net", "type": "portcullis", "prevResult": ` + prevResult
	if extra != "" {
		doc += ", " + extra
	}
	return []byte(doc + "}")
}

func TestParseConfBuildsThePolicy(t *testing.T) {
	c, err := ParseConf(conf(`
		"capabilities": {"portMappings": true},
		"stateDir": "/sys/fs/bpf/x", "logFile": "/tmp/log",
		"policy": {"allowedPorts": ["1024-65535"], "portMappings": [{"containerPort": 80, "hostPort": 18080}]},
		"policies": {"web": {"allowedPorts": ["8080"]}},
		"runtimeConfig": {"portMappings": [{"hostPort": 18053, "containerPort": 53, "protocol": "udp"}],
		                  "somethingElse": true}`),
		"IgnoreUnknown=1;K8S_POD_NAME=x;PORTCULLIS_POLICY=web")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/sys/fs/bpf/x" || c.LogFile != "/tmp/log" || c.PolicyName != "web" {
		t.Fatalf("conf %+v", c)
	}
	prev, err := c.ParsePrevResult()
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.ContainerPolicy(prev, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(p)
	want := `{"addresses":["10.1.0.2","fd00::2"],"allowedPorts":["8080"],"portMappings":[{"containerPort":80,"hostPort":18080,"protocol":"tcp"},{"containerPort":53,"hostPort":18053,"protocol":"udp"}]}`
	if string(data) != want {
		t.Errorf("policy\n %s\nwant\n %s", data, want)
	}
}

func TestParseConfDefaults(t *testing.T) {
	t.Setenv("PORTCULLIS_STATE_DIR", "/sys/fs/bpf/from-env")
	c, err := ParseConf(conf(""), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/sys/fs/bpf/from-env" || c.Policy != nil || c.PolicyName != "" {
		t.Fatalf("conf %+v", c)
	}
}

func TestParseConfErrors(t *testing.T) {
	for _, tc := range []struct {
		name, stdin, args string
		code              uint
		want              string
	}{
		{"malformed", `{"name": "net", `, "", types.ErrDecodingFailure, "the network configuration is not valid JSON"},
		{"unknown field", string(conf(`"polices": {"web": {}}`)), "", types.ErrUnsupportedField,
			`unknown field "polices" (value {"web":{}}) in the portcullis conf`},
		{"wrong type", string(conf(`"stateDir": 5`)), "", types.ErrDecodingFailure, "invalid portcullis conf: stateDir: expected string, got JSON number"},
		{"bad policy", string(conf(`"policy": {"allowedPorts": ["9-1"]}`)), "", types.ErrInvalidNetworkConfig,
			`policy: invalid policy: allowedPorts[0]: port range "9-1": end is below start`},
		{"unknown policy field", string(conf(`"policies": {"web": {"allowedPort": ["80"]}}`)), "", types.ErrInvalidNetworkConfig,
			`policies.web: invalid policy: unknown field "allowedPort"`},
		{"addresses in conf", string(conf(`"policy": {"addresses": ["10.0.0.1"]}`)), "", types.ErrInvalidNetworkConfig,
			"policy.addresses: a container's addresses come from the main plugin's result"},
		{"bad service", string(conf(`"services": [{"name": "db", "frontends": []}]`)), "", types.ErrInvalidNetworkConfig,
			"services: service db: needs at least one frontend"},
		{"unknown service field", string(conf(`"services": {"name": "db", "frontend": ["127.0.0.1:1"]}`)), "", types.ErrInvalidNetworkConfig,
			`services: unknown field "frontend"`},
		{"bad CNI_ARGS", string(conf("")), "PORTCULLIS_POLICY=web;K8S_POD_NAME=x", types.ErrInvalidEnvironmentVariables,
			`CNI_ARGS "PORTCULLIS_POLICY=web;K8S_POD_NAME=x": ARGS: unknown args ["K8S_POD_NAME=x"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConf([]byte(tc.stdin), tc.args)
			checkError(t, err, tc.code, tc.want)
		})
	}
}

func checkError(t *testing.T, err error, code uint, want string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a *types.Error", err, err)
	}
	if e.Code != code || !strings.HasPrefix(e.Msg, want) {
		t.Fatalf("error code %d %q, want code %d starting %q", e.Code, e.Msg, code, want)
	}
}

func TestContainerPolicyErrors(t *testing.T) {
	c, err := ParseConf(conf(`"policies": {"web": {}, "db": {}},
		"policy": {"portMappings": [{"containerPort": 80, "hostPort": 18080}]},
		"runtimeConfig": {"portMappings": [{"containerPort": 80, "hostPort": 8080}]}`), "PORTCULLIS_POLICY=dns")
	if err != nil {
		t.Fatal(err)
	}
	prev, err := c.ParsePrevResult()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ContainerPolicy(prev, "eth0")
	checkError(t, err, types.ErrInvalidNetworkConfig, `CNI_ARGS PORTCULLIS_POLICY=dns: the conf has no such policy under "policies" (it has: db, web)`)

	c.PolicyName = ""
	_, err = c.ContainerPolicy(prev, "eth0")
	checkError(t, err, types.ErrInvalidNetworkConfig,
		"the container's policy: portMappings: containerPort 80/tcp is mapped to 18080 by the conf's policy and to 8080 by runtimeConfig.portMappings")

	noPrev, err := ParseConf([]byte(`{"cniVersion": "1.0.0", "name": "net", "type": "portcullis"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = noPrev.ParsePrevResult()
	checkError(t, err, types.ErrInvalidNetworkConfig, "no prevResult: portcullis is a chained plugin")
}

func TestContainerAddresses(t *testing.T) {
	idx := func(i int) *int { return &i }
	ip := func(s string, iface *int) *current.IPConfig {
		ipn, err := types.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return &current.IPConfig{Address: net.IPNet(*ipn), Interface: iface}
	}
	res := &current.Result{
		Interfaces: []*current.Interface{{Name: "br0"}, {Name: "eth0", Sandbox: "/x"}, {Name: "net1", Sandbox: "/x"}},
		IPs: []*current.IPConfig{
			ip("10.0.0.1/24", idx(0)), ip("10.9.0.5/24", idx(2)), ip("fe80::1/64", idx(1)),
			ip("10.0.0.5/24", idx(1)), ip("2001:db8::5/64", idx(1)),
		},
	}
	got := ContainerAddresses(res, "eth0")
	if len(got) != 2 || got[0].String() != "10.0.0.5" || got[1].String() != "2001:db8::5" {
		t.Errorf("eth0 addresses %v", got)
	}
	if got := ContainerAddresses(res, "net1"); len(got) != 1 || got[0].String() != "10.9.0.5" {
		t.Errorf("net1 addresses %v", got)
	}
	// Without interface indices every address is the container's.
	res = &current.Result{IPs: []*current.IPConfig{ip("192.0.2.7/32", nil)}}
	if got := ContainerAddresses(res, "eth0"); len(got) != 1 || got[0].String() != "192.0.2.7" {
		t.Errorf("addresses without interface %v", got)
	}
}

func TestAttachmentID(t *testing.T) {
	for _, tc := range []struct{ container, ifname, want string }{
		{"0123abcdef", "eth0", "0123abcdef-eth0"},
		{"pod.ns.uid", "eth0", "pod_ns_uid-eth0"},
		{"default-web", "net1", "default-web-net1"},
	} {
		if got := AttachmentID(tc.container, tc.ifname); got != tc.want {
			t.Errorf("AttachmentID(%q, %q) = %q, want %q", tc.container, tc.ifname, got, tc.want)
		}
	}
	long := strings.Repeat("a", 200)
	a, b := AttachmentID(long, "eth0"), AttachmentID(long, "eth1")
	if len(a) != maxID || a == b || a != AttachmentID(long, "eth0") {
		t.Errorf("long ids: %q (%d), %q", a, len(a), b)
	}
}

// TestExampleConflists keeps conf/*.conflist valid: each parses as a CNI
// network list and its portcullis entry as a portcullis conf.
func TestExampleConflists(t *testing.T) {
	files, _ := filepath.Glob("../../conf/*.conflist")
	if len(files) < 2 {
		t.Fatalf("example conflists: %v", files)
	}
	for _, f := range files {
		list, err := libcni.ConfListFromFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		last := list.Plugins[len(list.Plugins)-1]
		if last.Network.Type != "portcullis" || len(list.Plugins) < 2 {
			t.Fatalf("%s: portcullis must come last, after a main plugin", f)
		}
		// libcni gives each plugin the list's name and version.
		withName, err := libcni.InjectConf(last, map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseConf(withName.Bytes, ""); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
