package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/portcullis-net/portcullis/pkg/metrics"
	"github.com/portcullis-net/portcullis/test/testenv"
)

func parse(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("the scrape does not parse: %v", err)
	}
	return fams
}

// find returns the value of the series of family name whose labels include
// want, failing when there is none.
func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no %s in the scrape", name)
	}
next:
	for _, m := range fam.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("no %s series with labels %v", name, want)
	return 0
}

func TestScrapeHasEverySeries(t *testing.T) {
	dir := testenv.StateDir(t)
	srv := httptest.NewServer(metrics.Handler(metrics.Registry(dir)))
	defer srv.Close()
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			t.Fatalf("scrape: %s: %s", resp.Status, body)
		}
		return parse(t, resp.Body)
	}
	if v := find(t, scrape(), "portcullis_loaded", nil); v != 0 {
		t.Errorf("portcullis_loaded before load = %v", v)
	}

	cg := testenv.Cgroup(t, "metrics")
	other := testenv.Cgroup(t, "metrics-other")
	testenv.Attach(t, dir, "m1", cg.Path, `{"allowedPorts": ["14030"]}`, "")
	testenv.Attach(t, dir, "m2", other.Path, `{}`, "")
	probe := testenv.Binary(t, "./test/sockprobe")
	p := testenv.Start(t, cg, exec.Command(probe, "listen", "-proto", "udp", "-addr", "127.0.0.1:14031"))
	if r := testenv.ParseProbe(t, p.Line(t, 5*time.Second)); r.Errno != "EPERM" {
		t.Fatalf("bind outside allowedPorts: %+v", r)
	}

	fams := scrape()
	if v := find(t, fams, "portcullis_loaded", nil); v != 1 {
		t.Errorf("portcullis_loaded = %v", v)
	}
	if v := find(t, fams, "portcullis_attachments", nil); v != 2 {
		t.Errorf("portcullis_attachments = %v", v)
	}
	m1 := map[string]string{"id": "m1", "cgroup": cg.Path}
	if fams["portcullis_decisions_total"].GetType() != dto.MetricType_COUNTER {
		t.Errorf("portcullis_decisions_total is a %v", fams["portcullis_decisions_total"].GetType())
	}
	if v := find(t, fams, "portcullis_decisions_total", with(m1, "reason", "bind_refused_port")); v != 1 {
		t.Errorf("m1 bind_refused_port = %v, want 1", v)
	}
	if v := find(t, fams, "portcullis_decisions_total", map[string]string{"id": "m2", "reason": "bind_refused_port"}); v != 0 {
		t.Errorf("m2 bind_refused_port = %v, want 0", v)
	}
	for _, name := range []string{"portcullis_traffic_packets_total", "portcullis_traffic_bytes_total"} {
		for _, dir := range []string{"ingress", "egress"} {
			for _, fam := range []string{"ipv4", "ipv6"} {
				for _, proto := range []string{"tcp", "udp", "other"} {
					find(t, fams, name, map[string]string{"id": "m2", "direction": dir, "family": fam, "protocol": proto})
				}
			}
		}
	}
	find(t, fams, "portcullis_attachment_info", with(m1, "cgroup_id", strconv.FormatUint(cg.ID, 10)))
}

func TestTextfileIsWrittenWhole(t *testing.T) {
	dir := testenv.StateDir(t)
	cg := testenv.Cgroup(t, "metrics-textfile")
	testenv.Attach(t, dir, "tf", cg.Path, `{}`, "")
	out := t.TempDir()
	path := filepath.Join(out, "portcullis.prom")
	if err := metrics.WriteTextfile(metrics.Registry(dir), path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fams := parse(t, f)
	find(t, fams, "portcullis_traffic_bytes_total", map[string]string{"id": "tf", "direction": "egress", "family": "ipv4", "protocol": "tcp"})
	entries, _ := os.ReadDir(out)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d files (a temporary left behind?)", len(entries))
	}
	if err := metrics.WriteTextfile(metrics.Registry(dir), filepath.Join(out, "portcullis.txt")); err == nil || !strings.Contains(err.Error(), ".prom") {
		t.Errorf("a name without .prom: %v", err)
	}
}

func with(base map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for bk, bv := range base {
		out[bk] = bv
	}
	return out
}
