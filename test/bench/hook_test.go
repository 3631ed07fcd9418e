package bench

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkHook measures what portcullis-hook adds to a container's start
// and stop: the built binary is run the way a runtime runs it (state JSON
// on stdin) at createRuntime and then poststop, for a live process in a
// cgroup of its own, at least 100 times. The same pair of runs for a
// container without annotations, which the hook leaves alone, is the
// baseline: process start-up, and what every other container pays.
func BenchmarkHook(b *testing.B) {
	dir := testenv.StateDir(b)
	hook := testenv.Binary(b, "./hooks/portcullis-hook")
	cg := testenv.Cgroup(b, "bench-hook")
	pid := testenv.Start(b, cg, exec.Command("sleep", "1000")).Cmd.Process.Pid
	// The state is loaded once, as on a host that already runs
	// containers; the first container's load is not what is measured.
	if _, err := state.Load(dir); err != nil {
		b.Fatal(err)
	}

	// The container drops CAP_NET_RAW, as the hook requires of a
	// host-network container whose policy pins addresses (packet sockets
	// pass no hook: docs/security.md).
	caps := []string{"CAP_NET_BIND_SERVICE"}
	bundle := func(annotations map[string]string) string {
		bdir := b.TempDir()
		data, _ := json.Marshal(specs.Spec{Version: specs.Version, Annotations: annotations,
			Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}}})
		if err := os.WriteFile(filepath.Join(bdir, "config.json"), data, 0o644); err != nil {
			b.Fatal(err)
		}
		return bdir
	}
	annotated := bundle(map[string]string{ocihook.AnnotationPolicy: `{"addresses": ["127.0.0.2", "::1"],
		"allowedPorts": ["1024-65535"], "portMappings": [{"containerPort": 80, "hostPort": 18080}]}`})
	plain := bundle(nil)

	run := func(stage, bundle string, status specs.ContainerState) time.Duration {
		data, _ := json.Marshal(specs.State{Version: specs.Version, ID: "bench-hook", Status: status, Pid: pid, Bundle: bundle})
		cmd := exec.Command(hook, stage)
		cmd.Stdin = strings.NewReader(string(data))
		start := time.Now()
		out, err := cmd.CombinedOutput()
		elapsed := time.Since(start)
		if err != nil {
			b.Fatalf("portcullis-hook %s: %v\n%s", stage, err, out)
		}
		return elapsed
	}

	runs := max(b.N, 100)
	var create, stop, pair, base, baseStop []time.Duration
	b.ResetTimer()
	for i := 0; i < runs; i++ {
		c := run("createRuntime", annotated, specs.StateCreating)
		s := run("poststop", annotated, specs.StateStopped)
		create, stop, pair = append(create, c), append(stop, s), append(pair, c+s)
		bs := run("poststop", plain, specs.StateStopped)
		base, baseStop = append(base, run("createRuntime", plain, specs.StateCreating)+bs), append(baseStop, bs)
	}
	b.StopTimer()

	// Every run must have attached and detached.
	s, err := state.Open(dir, false)
	if err != nil {
		b.Fatal(err)
	}
	list, err := s.Attachments()
	s.Close()
	if err != nil || len(list) != 0 {
		b.Fatalf("attachments left after the runs: %v %v", list, err)
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(pair, 50)), "ms/p50-create+poststop")
	b.ReportMetric(ms(percentile(pair, 99)), "ms/p99-create+poststop")
	b.ReportMetric(ms(percentile(create, 50)), "ms/p50-create")
	b.ReportMetric(ms(percentile(stop, 50)), "ms/p50-poststop")
	b.ReportMetric(ms(percentile(base, 50)), "ms/p50-unannotated")
	b.ReportMetric(ms(percentile(baseStop, 50)), "ms/p50-unannotated-poststop")
	b.ReportMetric(float64(percentile(pair, 50))/float64(percentile(base, 50)), "ratio-p50")
	b.ReportMetric(float64(runs), "runs")
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}
