// Package metrics exposes portcullis' counters in the Prometheus format.
//
// The collector holds no data: at every scrape it opens the pinned state
// (with a shared lock), reads the per-attachment counter maps through
// pkg/stats and turns them into metrics, so what a scrape shows is the
// kernel's value at that moment and nothing runs between scrapes. The same
// registry serves /metrics (portcullisctl metrics --listen) and the
// node_exporter textfile (portcullisctl metrics --textfile). The metrics
// are described in docs/metrics.md.
package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
)

var (
	attachmentLabels = []string{"id", "owner", "cgroup"}
	trafficLabels    = append(append([]string{}, attachmentLabels...), "direction", "family", "protocol")
	decisionLabels   = append(append([]string{}, attachmentLabels...), "reason")

	loadedDesc = prometheus.NewDesc("portcullis_loaded",
		"1 when the portcullis programs and maps are pinned in the state directory, else 0.", nil, nil)
	attachmentsDesc = prometheus.NewDesc("portcullis_attachments",
		"Number of attachments (containers or cgroups with a policy).", nil, nil)
	attachmentInfoDesc = prometheus.NewDesc("portcullis_attachment_info",
		"One series per attachment, value 1, naming it.", append(append([]string{}, attachmentLabels...), "cgroup_id"), nil)
	packetsDesc = prometheus.NewDesc("portcullis_traffic_packets_total",
		"Packets received (ingress) or sent (egress) by the attachment's sockets, by address family and protocol.", trafficLabels, nil)
	bytesDesc = prometheus.NewDesc("portcullis_traffic_bytes_total",
		"Bytes at the IP layer (headers included) received (ingress) or sent (egress) by the attachment's sockets.", trafficLabels, nil)
	decisionsDesc = prometheus.NewDesc("portcullis_decisions_total",
		"Policy decisions taken for the attachment, by reason.", decisionLabels, nil)
)

// Collector reads the pinned state of one directory at each scrape.
type Collector struct {
	dir string
}

// NewCollector returns a collector for the state in dir.
func NewCollector(dir string) *Collector { return &Collector{dir: dir} }

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{loadedDesc, attachmentsDesc, attachmentInfoDesc, packetsDesc, bytesDesc, decisionsDesc} {
		ch <- d
	}
}

// Collect reads the counters now. A state that is not loaded is reported
// as portcullis_loaded 0; any other failure fails the scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s, err := state.Open(c.dir, false)
	if errors.Is(err, state.ErrNotLoaded) {
		ch <- prometheus.MustNewConstMetric(loadedDesc, prometheus.GaugeValue, 0)
		return
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(loadedDesc, err)
		return
	}
	defer s.Close()
	list, err := stats.Read(s)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(attachmentsDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(loadedDesc, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(attachmentsDesc, prometheus.GaugeValue, float64(len(list)))
	for _, a := range list {
		ch <- prometheus.MustNewConstMetric(attachmentInfoDesc, prometheus.GaugeValue, 1, a.ID, a.Owner, a.Cgroup, fmt.Sprint(a.CgroupID))
		for _, t := range a.Traffic {
			ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(t.Packets), a.ID, a.Owner, a.Cgroup, t.Direction, t.Family, t.Protocol)
			ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(t.Bytes), a.ID, a.Owner, a.Cgroup, t.Direction, t.Family, t.Protocol)
		}
		for _, r := range stats.Reasons() {
			ch <- prometheus.MustNewConstMetric(decisionsDesc, prometheus.CounterValue, float64(a.Decision(r)), a.ID, a.Owner, a.Cgroup, r.String())
		}
	}
}

// Registry returns a registry holding only portcullis' collector for the
// state in dir.
func Registry(dir string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(dir))
	return reg
}

// Handler serves the registry; a failed read answers 500 with the error
// instead of a partial scrape.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

// WriteTextfile writes one scrape to path for node_exporter's textfile
// collector: to a temporary file in the same directory, renamed into
// place, so the collector never reads a half-written file.
func WriteTextfile(reg *prometheus.Registry, path string) error {
	if !strings.HasSuffix(path, ".prom") {
		return fmt.Errorf("textfile %s: the name must end in .prom (node_exporter's textfile collector reads only *.prom)", path)
	}
	if err := prometheus.WriteToTextfile(path, reg); err != nil {
		return fmt.Errorf("write textfile %s: %w", path, err)
	}
	return nil
}
