package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/crienv"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkCRIPods measures pods through containerd 1.6's CRI plugin, as
// kubelet makes them (crictl runp, then stopp and rmp), with portcullis
// chained after bridge + host-local and without it, two containerds side
// by side in one run, alternating. It also reports the plugin's own ADD
// and DEL time, from its logFile, as containerd invoked it.
func BenchmarkCRIPods(b *testing.B) {
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
			b.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	plugin := testenv.Binary(b, "./plugins/portcullis")
	stateDir := testenv.StateDir(b)
	logFile := filepath.Join(b.TempDir(), "portcullis.log")
	start := func(withPortcullis bool, subnet string) *crienv.Containerd {
		dir := b.TempDir()
		for _, sub := range []string{"net.d", "bin"} {
			os.MkdirAll(filepath.Join(dir, sub), 0o755)
		}
		for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback", plugin} {
			os.Symlink(p, filepath.Join(dir, "bin", filepath.Base(p)))
		}
		chained := ""
		if withPortcullis {
			chained = fmt.Sprintf(`, {"type": "portcullis", "stateDir": %q, "logFile": %q, "capabilities": {"portMappings": true},
				"policy": {"allowedPorts": ["20000-20999"]}}`, stateDir, logFile)
		}
		os.WriteFile(filepath.Join(dir, "net.d", "10-bench.conflist"), []byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pc-bench-cri",
			"plugins": [{"type": "bridge", "bridge": "pcbr%s", "isGateway": true,
			  "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}}%s]}`,
			testenv.Suffix(), subnet, filepath.Join(dir, "ipam"), chained)), 0o644)
		return crienv.Start(b, testenv.NewNetNS(b), crienv.Options{CNIConfDir: filepath.Join(dir, "net.d"), CNIBinDir: filepath.Join(dir, "bin")})
	}
	sides := map[string]*crienv.Containerd{"portcullis": start(true, "10.20.8.0/24"), "plain": start(false, "10.20.7.0/24")}

	// Each pod takes a few hundred ms, so the count is fixed rather than
	// b.N (make bench's 2000x would take an hour).
	const runs = 30
	times := map[string][]time.Duration{}
	crictl := func(c *crienv.Containerd, args ...string) (string, time.Duration) {
		t0 := time.Now()
		out, err := c.Crictl(args...)
		if err != nil {
			b.Fatalf("crictl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out, time.Since(t0)
	}
	b.ResetTimer()
	for i := 0; i < runs; i++ {
		order := []string{"portcullis", "plain"}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, name := range order {
			c := sides[name]
			config, _ := c.PodConfig(fmt.Sprintf("bench%d", i), false, nil)
			id, run := crictl(c, "runp", config)
			_, stop := crictl(c, "stopp", id)
			_, rm := crictl(c, "rmp", id)
			times[name+"/run"] = append(times[name+"/run"], run)
			times[name+"/stop+rm"] = append(times[name+"/stop+rm"], stop+rm)
		}
	}
	b.StopTimer()

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, what := range []string{"run", "stop+rm"} {
		for _, name := range []string{"portcullis", "plain"} {
			b.ReportMetric(ms(percentile(times[name+"/"+what], 50)), "ms/p50-"+what+"-"+name)
		}
		b.ReportMetric(float64(percentile(times["portcullis/"+what], 50))/float64(percentile(times["plain/"+what], 50)), "ratio-p50-"+what)
	}
	// The plugin's own time per verb, as containerd ran it: the ADD, and
	// the DEL that detached (containerd calls DEL again at rmp).
	log, _ := os.ReadFile(logFile)
	verbs := map[string][]time.Duration{}
	attached := map[string]bool{}
	line := regexp.MustCompile(`^\S+ (ADD|DEL) container=(\S+) .* (ok in|detached|attached) ?(\S*)`)
	for _, l := range strings.Split(string(log), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		switch {
		case m[3] == "detached":
			attached[m[2]] = true
		case m[3] == "ok in" && m[1] == "ADD":
			d, _ := time.ParseDuration(m[4])
			verbs["ADD"] = append(verbs["ADD"], d)
		case m[3] == "ok in" && m[1] == "DEL" && attached[m[2]]:
			d, _ := time.ParseDuration(m[4])
			verbs["DEL"] = append(verbs["DEL"], d)
			delete(attached, m[2])
		}
	}
	if len(verbs["ADD"]) != runs || len(verbs["DEL"]) != runs {
		b.Fatalf("plugin log has %d ADDs and %d detaching DELs, want %d of each:\n%s", len(verbs["ADD"]), len(verbs["DEL"]), runs, log)
	}
	b.ReportMetric(ms(percentile(verbs["ADD"], 50)), "ms/p50-plugin-ADD")
	b.ReportMetric(ms(percentile(verbs["DEL"], 50)), "ms/p50-plugin-DEL")
	b.ReportMetric(float64(runs), "runs")
}
