package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/testenv"
	"github.com/portcullis-net/portcullis/test/upgrade"
)

// BenchmarkUpgrade upgrades a real layout-1 state (loaded and filled by the
// previous release's portcullisctl, test/testdata) holding 1,000
// attachments, while a client in one of them connects through a service
// frontend in a loop and another container tries allowed and forbidden
// binds: the time portcullisctl upgrade takes (the process, end to end),
// and the connects that failed and binds that escaped the policy during
// it (both must be 0). Attaching the 1,000 with the old binary takes
// about 20 s.
func BenchmarkUpgrade(b *testing.B) {
	const n = 1000
	e := upgrade.Layout1(b)
	parent := testenv.Cgroup(b, "bench-upgrade")
	doc := filepath.Join(b.TempDir(), "p.json")
	os.WriteFile(doc, []byte(`{"addresses": ["127.0.0.2"], "allowedPorts": ["1024-65535"],
		"portMappings": [{"containerPort": 80, "hostPort": 11280}]}`), 0o644)
	for i := len(e.Groups); i < n; i++ {
		path := filepath.Join(parent.Path, fmt.Sprintf("u%d", i))
		if err := os.Mkdir(path, 0o755); err != nil {
			b.Fatal(err)
		}
		e.Run(b, e.V1, "attach", "--id", fmt.Sprintf("u%d", i), "--cgroup", path, "--policy", doc)
	}
	var took time.Duration
	var counts []upgrade.LoadCounts
	b.Run(fmt.Sprintf("attachments=%d", n), func(b *testing.B) {
		// The benchmark runs this more than once; the state is
		// upgraded once.
		if counts == nil {
			e.StartLoad(b)
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			out := e.Run(b, e.V2, "upgrade")
			took = time.Since(start)
			time.Sleep(200 * time.Millisecond)
			counts = e.StopLoad(b)
			b.Log(out)
		}
		b.ReportMetric(float64(took)/float64(time.Millisecond), "ms/upgrade")
		b.ReportMetric(float64(counts[0].Failed), "failed-connects")
		b.ReportMetric(float64(counts[0].OK), "connects")
		b.ReportMetric(float64(counts[1].Escaped), "escaped-binds")
	})
	// The state's cleanup detaches the 1,000 (unload --force).
}
