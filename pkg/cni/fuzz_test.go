package cni

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzConf feeds the plugin's parsing arbitrary confs and CNI_ARGS, the
// way ADD and CHECK go through them: ParseConf (with policy, policies,
// services, runtimeConfig), then prevResult, then the container's policy.
// Nothing may panic, and every refusal must be a *types.Error with a code
// and a one-line message, as the runtime gets it.
func FuzzConf(f *testing.F) {
	const prev = `"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}, {"name": "veth19"}],
		"ips": [{"address": "10.19.0.2/24", "interface": 0}, {"address": "fd19::2/64", "interface": 0}, {"address": "10.19.1.2/24", "interface": 1}]}`
	for _, seed := range []struct{ conf, args string }{
		{`{"cniVersion": "1.0.0", "name": "n19", "type": "portcullis", ` + prev + `}`, ""},
		{`{"cniVersion": "1.1.0", "name": "n19", "type": "portcullis", "policy": {"allowedPorts": ["19000-19010"]},
			"policies": {"web": {"allowedPorts": ["19080"], "provides": [{"service": "web19", "port": 19080}]}},
			"services": [{"name": "web19", "frontends": ["10.19.0.10:80"]}],
			"runtimeConfig": {"portMappings": [{"containerPort": 80, "hostPort": 19080, "protocol": "tcp"}], "cgroupPath": "/x"}, ` + prev + `}`,
			"IgnoreUnknown=1;PORTCULLIS_POLICY=web"},
		{`{"cniVersion": "0.4.0", "name": "n19", "type": "portcullis", "prevResult": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.19.0.2/24"}]}}`, ""},
		{`{"cniVersion": "1.0.0", "name": "n19", "type": "portcullis", "stateDir": "/etc", ` + prev + `}`, "PORTCULLIS_POLICY=nope"},
		{`{"cniVersion": "1.0.0", "name": "n19", "type": "portcullis", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}`, ""},
		{`{"cniVersion": "1.0.0", "name": "n19", "type": "portcullis", "policy": {"addresses": ["10.19.0.2"]}}`, ""},
		{`{"cniVersion": "1.0.0", "name": "n19", "prevResult": {"ips": [{"address": "10.19.0.2/24", "interface": 7}]}}`, ""},
		{`{"cniVersion": "1.0.0", "name": "n19", "runtimeConfig": {"portMappings": [{"containerPort": 0}]}}`, "K8S_POD_NAME=x"},
		{`[]`, ""}, {``, ""}, {`{"policies": {"a": null}}`, "IgnoreUnknown=true"},
	} {
		f.Add([]byte(seed.conf), seed.args)
	}
	for _, path := range []string{"../../conf/bridge-portcullis.conflist", "../../conf/ptp-portcullis.conflist"} {
		if data, err := os.ReadFile(filepath.Clean(path)); err == nil {
			f.Add(data, "")
		}
	}
	f.Fuzz(func(t *testing.T, conf []byte, args string) {
		c, err := ParseConf(conf, args)
		if err != nil {
			oneCNIError(t, err)
			return
		}
		prev, err := c.ParsePrevResult()
		if err != nil {
			oneCNIError(t, err)
			return
		}
		if _, err := c.ContainerPolicy(prev, "eth0"); err != nil {
			oneCNIError(t, err)
		}
	})
}

func oneCNIError(t *testing.T, err error) {
	t.Helper()
	e, ok := err.(*types.Error)
	if !ok {
		t.Fatalf("error %q is a %T, not the CNI error the runtime needs", err, err)
	}
	if e.Code == 0 || e.Msg == "" || strings.Contains(e.Msg, "\n") {
		t.Fatalf("error code %d msg %q: want a code and a one-line message", e.Code, e.Msg)
	}
}
