package bench

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

var (
	acctOnce    sync.Once
	acctErr     error
	acctResults struct {
		plain, accounted float64 // Gbit/s
		nsPerRun         float64 // cgroup_skb programs, per invocation
		runs             uint64
	}
)

// iperfGbits runs one iperf3 client in cg for secs seconds against port on
// 127.0.0.1 and returns the received throughput.
func iperfGbits(b *testing.B, iperf string, cg cgroup.Cgroup, port, secs int) (float64, error) {
	p := testenv.Start(b, cg, exec.Command(iperf, "-c", "127.0.0.1", "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs), "-J"))
	var report struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	out := p.Output(b, time.Duration(secs+20)*time.Second)
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		return 0, fmt.Errorf("iperf3: %v: %s %s", err, out, p.Stderr())
	}
	return report.End.SumReceived.BitsPerSecond / 1e9, nil
}

// BenchmarkAccountingStream: one TCP stream (iperf3 to a server on
// loopback in the host's cgroup) from an attached container, whose
// cgroup_skb programs count every packet, versus from a cgroup with no
// programs, alternating 2-second runs in one run.
// An extra accounted run with BPF run-time statistics on (BPF_ENABLE_STATS,
// only while the benchmark holds the fd) gives the programs' cost per
// invocation: one per skb, and with GSO/GRO an skb holds several packets.
// It measures once, whatever b.N is.
func BenchmarkAccountingStream(b *testing.B) {
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	acctOnce.Do(func() {
		const port, rounds, secs = 14201, 3, 2
		srv := exec.Command(iperf, "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
		if acctErr = srv.Start(); acctErr != nil {
			return
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		dir := testenv.StateDir(b)
		accounted := testenv.Cgroup(b, "bench-acct")
		plain := testenv.Cgroup(b, "bench-plain")
		s, err := state.OpenOrLoad(dir)
		if err != nil {
			acctErr = err
			return
		}
		_, err = s.Attach(state.AttachRequest{ID: "acct", Cgroup: accounted.Path, Policy: &policy.Policy{}})
		s.Close()
		if err != nil {
			acctErr = err
			return
		}
		var progs []*ebpf.Program
		for _, name := range []string{bpfobj.PortcullisProgAccountIngress, bpfobj.PortcullisProgAccountEgress} {
			p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "progs", name), nil)
			if err != nil {
				acctErr = err
				return
			}
			defer p.Close()
			progs = append(progs, p)
		}
		stats := func() (runtime time.Duration, runs uint64) {
			for _, p := range progs {
				info, err := p.Stats()
				if err == nil {
					runtime += info.Runtime
					runs += info.RunCount
				}
			}
			return
		}
		// Throughput alternates plain and accounted runs without the
		// statistics (they time every program run); one more accounted
		// run with them on gives the cost per invocation.
		for i := 0; i < rounds; i++ {
			for _, side := range []struct {
				cg  cgroup.Cgroup
				sum *float64
			}{{plain, &acctResults.plain}, {accounted, &acctResults.accounted}} {
				g, err := iperfGbits(b, iperf, side.cg, port, secs)
				if err != nil {
					acctErr = err
					return
				}
				*side.sum += g / rounds
			}
		}
		enabled, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			acctErr = fmt.Errorf("BPF_ENABLE_STATS: %w", err)
			return
		}
		rt0, n0 := stats()
		_, err = iperfGbits(b, iperf, accounted, port, secs)
		rt1, n1 := stats()
		enabled.Close()
		if err != nil {
			acctErr = err
			return
		}
		runtime, runs := rt1-rt0, n1-n0
		acctResults.runs = runs
		if runs > 0 {
			acctResults.nsPerRun = float64(runtime.Nanoseconds()) / float64(runs)
		}
	})
	if acctErr != nil {
		b.Fatal(acctErr)
	}
	b.ReportMetric(acctResults.plain, "Gbit/s-unattached")
	b.ReportMetric(acctResults.accounted, "Gbit/s-accounted")
	b.ReportMetric(acctResults.accounted/acctResults.plain, "ratio")
	b.ReportMetric(acctResults.nsPerRun, "ns/skb-cgroup_skb")
	b.ReportMetric(float64(acctResults.runs), "skbs-counted")
}
