package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkCNI measures the ADD and DEL latency of the portcullis plugin
// side by side with the reference portmap plugin (Debian's, /usr/lib/cni)
// doing the same container's port mapping, in the same run. Both are run
// as a runtime runs them: the binary, the CNI environment, the conf with
// the bridge's result as prevResult and the mapping in
// runtimeConfig.portMappings on stdin, inside a test-made host namespace
// (portmap writes its iptables rules there). The container is made once
// with bridge + host-local; each of the 200 runs is ADD then DEL of each
// plugin.
//
// A host running pods has the namespace programs attached already (the
// first namespace-keyed attachment attaches them to the cgroup root, the
// last one's DEL detaches them), so the runs are made beside a resident
// pod: that is what every ADD and DEL but a host's first and last pays.
// The first pod's ADD and the last one's DEL are measured apart first, 30
// times, and reported as "first".
func BenchmarkCNI(b *testing.B) {
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
			b.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	testenv.RequireCommand(b, "iptables", "iptables")
	stateDir := testenv.StateDir(b)
	plugin := testenv.Binary(b, "./plugins/portcullis")
	host := testenv.NewNetNS(b)
	container := testenv.NewNetNS(b)
	cg := testenv.Cgroup(b, "bench-cni")
	testenv.Start(b, cg, container.Command("sleep", "1000"))
	// The state is loaded once, as on a host already running containers.
	if _, err := state.Load(stateDir); err != nil {
		b.Fatal(err)
	}

	// The container's network, from the reference chain's main plugin.
	bridgeConf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pc-bench", "plugins": [
		{"type": "bridge", "bridge": "pcbr%s", "isGateway": true,
		 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.95.0.0/24"}]], "dataDir": %q}}]}`, testenv.Suffix(), b.TempDir())
	list, err := libcni.ConfListFromBytes([]byte(bridgeConf))
	if err != nil {
		b.Fatal(err)
	}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{"/usr/lib/cni"}, b.TempDir(), nil)
	rt := &libcni.RuntimeConf{ContainerID: "pc-bench", NetNS: container.Path, IfName: "eth0"}
	var prev []byte
	err = ns.WithNetNSPath(host.Path, func(ns.NetNS) error {
		res, err := cfg.AddNetworkList(context.Background(), list, rt)
		if err != nil {
			return err
		}
		r, err := current.NewResultFromResult(res)
		if err != nil {
			return err
		}
		r.CNIVersion = "1.0.0" // what Debian's portmap speaks
		prev, err = json.Marshal(r)
		return err
	})
	if err != nil {
		b.Fatalf("bridge ADD: %v", err)
	}

	mapping := `"runtimeConfig": {"portMappings": [{"hostPort": 28080, "containerPort": 8080, "protocol": "tcp"}]}`
	confs := map[string]string{
		"portcullis": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pc-bench", "type": "portcullis", "stateDir": %q,
			"policy": {"allowedPorts": ["1024-65535"]}, %s, "prevResult": %s}`, stateDir, mapping, prev),
		"portmap": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pc-bench", "type": "portmap", %s, "prevResult": %s}`, mapping, prev),
	}
	binaries := map[string]string{"portcullis": plugin, "portmap": "/usr/lib/cni/portmap"}
	invoke := func(name, command string) (time.Duration, error) {
		cmd := exec.Command(binaries[name])
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=pc-bench", "CNI_NETNS="+container.Path,
			"CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni")
		cmd.Stdin = strings.NewReader(confs[name])
		start := time.Now()
		out, err := cmd.CombinedOutput()
		elapsed := time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %v\n%s", name, command, err, out)
		}
		return elapsed, nil
	}

	// Each run launches four plugin processes (~0.3 s in all), so the
	// count is fixed rather than b.N: make bench's 2000x would take ten
	// minutes, and 200 samples give a stable p99.
	const runs = 200
	times := map[string][]time.Duration{}
	err = ns.WithNetNSPath(host.Path, func(ns.NetNS) error {
		for i := 0; i < 30; i++ {
			for _, verb := range []string{"ADD", "DEL"} {
				d, err := invoke("portcullis", verb)
				if err != nil {
					return err
				}
				times["first/"+verb] = append(times["first/"+verb], d)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	resident := testenv.NewNetNS(b)
	if s, err := state.Open(stateDir, true); err != nil {
		b.Fatal(err)
	} else {
		_, err = s.Attach(state.AttachRequest{ID: "resident", NetNS: resident.Path, KeyByNetNS: true, Owner: "bench"})
		s.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	err = ns.WithNetNSPath(host.Path, func(ns.NetNS) error {
		for i := 0; i < runs; i++ {
			// Alternate which plugin goes first so drift hits both.
			order := []string{"portcullis", "portmap"}
			if i%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, name := range order {
				for _, verb := range []string{"ADD", "DEL"} {
					d, err := invoke(name, verb)
					if err != nil {
						return err
					}
					times[name+"/"+verb] = append(times[name+"/"+verb], d)
				}
			}
			// The floor: the same binary answering VERSION, which
			// starts the process and reads no state.
			d, err := invoke("portcullis", "VERSION")
			if err != nil {
				return err
			}
			times["noop"] = append(times["noop"], d)
		}
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	// ns/op is one run: ADD and DEL of both plugins.
	b.ReportMetric(float64(time.Since(start))/runs, "ns/op")

	// Every DEL must have removed what its ADD made.
	s, err := state.Open(stateDir, false)
	if err != nil {
		b.Fatal(err)
	}
	left, err := s.Attachments()
	if err == nil && len(left) == 1 && left[0].ID == "resident" {
		err = s.Detach("resident")
		left = nil
	}
	s.Close()
	if err != nil || len(left) != 0 {
		b.Fatalf("attachments left after the runs: %v %v", left, err)
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, verb := range []string{"ADD", "DEL"} {
		for _, name := range []string{"portcullis", "portmap"} {
			ds := times[name+"/"+verb]
			b.ReportMetric(ms(percentile(ds, 50)), "ms/p50-"+name+"-"+verb)
			b.ReportMetric(ms(percentile(ds, 99)), "ms/p99-"+name+"-"+verb)
		}
		b.ReportMetric(float64(percentile(times["portcullis/"+verb], 50))/float64(percentile(times["portmap/"+verb], 50)), "ratio-p50-"+verb)
	}
	for _, verb := range []string{"ADD", "DEL"} {
		b.ReportMetric(ms(percentile(times["first/"+verb], 50)), "ms/p50-first-"+verb)
	}
	b.ReportMetric(ms(percentile(times["noop"], 50)), "ms/p50-portcullis-VERSION")
	b.ReportMetric(float64(runs), "runs")
}
