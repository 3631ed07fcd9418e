package bench

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
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
	"github.com/portcullis-net/portcullis/pkg/stats"
	"github.com/portcullis-net/portcullis/test/testenv"
)

var (
	acctOnce    sync.Once
	acctErr     error
	acctResults acctStream
)

// acctStream are the figures of one with/without stream benchmark.
type acctStream struct {
	plain, accounted float64 // Gbit/s, medians of the rounds
	ratio            float64 // median of the rounds' accounted/plain
	minRatio         float64
	maxRatio         float64
	nsPerRun         float64 // the programs, per invocation (one skb)
	nsPerPacket      float64 // the same time over the packets counted (GSO segments)
	runs             uint64
}

// Rounds and seconds of the stream benchmarks: each round runs both sides
// once, in alternating order (plain first in even rounds, accounted first
// in odd ones), so a drift of the machine's load over the run weighs on
// both alike; the ratio of each round is taken and the median of those is
// reported with the smallest and largest.
const (
	streamRounds = 9
	streamSecs   = 3
)

func medianOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// interleave runs plain and accounted streamRounds times each, in
// alternating order, and fills the throughput and ratio figures of r.
func interleave(r *acctStream, plain, accounted func() (float64, error)) error {
	var ps, as, ratios []float64
	for i := 0; i < streamRounds; i++ {
		order := []func() (float64, error){plain, accounted}
		if i%2 == 1 {
			order = []func() (float64, error){accounted, plain}
		}
		var got [2]float64
		for j, run := range order {
			g, err := run()
			if err != nil {
				return err
			}
			got[j] = g
		}
		p, a := got[0], got[1]
		if i%2 == 1 {
			p, a = got[1], got[0]
		}
		if p <= 0 {
			return fmt.Errorf("round %d: unattached stream measured %v Gbit/s", i, p)
		}
		ps, as, ratios = append(ps, p), append(as, a), append(ratios, a/p)
	}
	r.plain, r.accounted, r.ratio = medianOf(ps), medianOf(as), medianOf(ratios)
	sorted := append([]float64(nil), ratios...)
	sort.Float64s(sorted)
	r.minRatio, r.maxRatio = sorted[0], sorted[len(sorted)-1]
	return nil
}

// programCost runs one more accounted stream with BPF run-time statistics
// on (BPF_ENABLE_STATS times every program run, so it stays off for the
// throughput rounds) and fills the per-invocation and per-packet cost of
// progs in r; packets reads the packets the programs counted so far.
func programCost(r *acctStream, progs []*ebpf.Program, packets func() (uint64, error), run func() (float64, error)) error {
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
	enabled, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("BPF_ENABLE_STATS: %w", err)
	}
	rt0, n0 := stats()
	p0, err := packets()
	if err != nil {
		enabled.Close()
		return err
	}
	_, err = run()
	rt1, n1 := stats()
	enabled.Close()
	if err != nil {
		return err
	}
	p1, err := packets()
	if err != nil {
		return err
	}
	runtime, runs := rt1-rt0, n1-n0
	r.runs = runs
	if runs > 0 {
		r.nsPerRun = float64(runtime.Nanoseconds()) / float64(runs)
	}
	if p1 > p0 {
		r.nsPerPacket = float64(runtime.Nanoseconds()) / float64(p1-p0)
	}
	return nil
}

// countedPackets sums the packets, both ways, in the counters of id.
func countedPackets(dir, id string) func() (uint64, error) {
	return func() (uint64, error) {
		s, err := state.Open(dir, false)
		if err != nil {
			return 0, err
		}
		defer s.Close()
		a, err := s.Get(id)
		if err != nil {
			return 0, err
		}
		m, err := stats.Open(dir)
		if err != nil {
			return 0, err
		}
		defer m.Close()
		c, err := m.Of(a)
		if err != nil {
			return 0, err
		}
		in, _ := c.Total("ingress")
		out, _ := c.Total("egress")
		return in + out, nil
	}
}

func (r *acctStream) report(b *testing.B, programs string) {
	b.ReportMetric(r.plain, "Gbit/s-unattached")
	b.ReportMetric(r.accounted, "Gbit/s-accounted")
	b.ReportMetric(r.ratio, "ratio-median")
	b.ReportMetric(r.minRatio, "ratio-min")
	b.ReportMetric(r.maxRatio, "ratio-max")
	b.ReportMetric(r.nsPerRun, "ns/skb-"+programs)
	b.ReportMetric(r.nsPerPacket, "ns/packet-"+programs)
	b.ReportMetric(float64(r.runs), "skbs-counted")
}

// iperfGbits runs one iperf3 client in cg for secs seconds against port on
// 127.0.0.1 and returns the received throughput.
func iperfGbits(b *testing.B, iperf string, cg cgroup.Cgroup, port, secs int) (float64, error) {
	return iperfFrom(b, iperf, cg, nil, "127.0.0.1", port, secs)
}

// iperfFrom runs one iperf3 client in cg and netns (nil: the caller's)
// for secs seconds (after one omitted second of slow start) against
// addr:port and returns the received throughput.
func iperfFrom(b *testing.B, iperf string, cg cgroup.Cgroup, netns *testenv.NetNS, addr string, port, secs int) (float64, error) {
	p := testenv.Start(b, cg, netns.Command(iperf, "-c", addr, "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs), "-O", "1", "-J"))
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
// programs, interleaved over streamRounds rounds in one run; the median
// of the rounds' ratios is reported. An extra accounted run with BPF
// run-time statistics on gives the programs' cost per invocation (one per
// skb; with GSO/GRO an skb holds several packets) and per packet. It
// measures once, whatever b.N is.
func BenchmarkAccountingStream(b *testing.B) {
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	acctOnce.Do(func() {
		const port = 14201
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
		runPlain := func() (float64, error) { return iperfGbits(b, iperf, plain, port, streamSecs) }
		runAccounted := func() (float64, error) { return iperfGbits(b, iperf, accounted, port, streamSecs) }
		if acctErr = interleave(&acctResults, runPlain, runAccounted); acctErr != nil {
			return
		}
		acctErr = programCost(&acctResults, progs, countedPackets(dir, "acct"), runAccounted)
	})
	if acctErr != nil {
		b.Fatal(acctErr)
	}
	acctResults.report(b, "cgroup_skb")
}

var (
	podAcctOnce    sync.Once
	podAcctErr     error
	podAcctResults acctStream
	hostAcctOnce   sync.Once
	hostAcctErr    error
	hostAcctResult acctStream
)

// netnsAccountPrograms opens the namespace copy's cgroup_skb programs.
func netnsAccountPrograms(dir string) ([]*ebpf.Program, error) {
	var progs []*ebpf.Program
	for _, name := range []string{bpfobj.PortcullisProgAccountIngress, bpfobj.PortcullisProgAccountEgress} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "netns", "progs", name), nil)
		if err != nil {
			for _, o := range progs {
				o.Close()
			}
			return nil, err
		}
		progs = append(progs, p)
	}
	return progs, nil
}

// attachPod attaches the namespace at path as a pod (keyed by it), its
// namespace programs on parent.
func attachPod(dir, id, path string, parent cgroup.Cgroup) error {
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.Attach(state.AttachRequest{ID: id, Policy: &policy.Policy{}, NetNS: path, KeyByNetNS: true, NetNSCgroup: parent.Path})
	return err
}

// BenchmarkPodAccountingStream: the same for a pod keyed by its network
// namespace, whose sockets' packets the namespace copy of the cgroup_skb
// programs counts from the common ancestor cgroup: one TCP stream from
// the pod over a veth to an iperf3 server in a second namespace, with the
// pod attached versus the same namespaces, task and server with it
// detached (no namespace programs anywhere then), interleaved; then the
// programs' cost per skb and per packet. Attaching and detaching between
// rounds keeps everything else identical.
func BenchmarkPodAccountingStream(b *testing.B) {
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	podAcctOnce.Do(func() {
		const port = 14202
		dir := testenv.StateDir(b)
		parent := testenv.Cgroup(b, "bench-pods")
		tasks := testenv.ChildCgroup(b, parent, "pod")
		pod, srvNS := testenv.NewNetNS(b), testenv.NewNetNS(b)
		const addr = "10.213.80.2"
		a, z := "pcb"+testenv.Suffix(), "pcb"+testenv.Suffix()
		testenv.Run(b, "ip", "link", "add", a, "netns", pod.Name, "type", "veth", "peer", "name", z, "netns", srvNS.Name)
		pod.IP(b, "addr", "add", "10.213.80.1/30", "dev", a)
		srvNS.IP(b, "addr", "add", addr+"/30", "dev", z)
		pod.IP(b, "link", "set", a, "up")
		srvNS.IP(b, "link", "set", z, "up")
		srv := srvNS.Command(iperf, "-s", "-B", addr, "-p", strconv.Itoa(port))
		if podAcctErr = srv.Start(); podAcctErr != nil {
			return
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		if _, podAcctErr = state.Load(dir); podAcctErr != nil {
			return
		}
		attached := false
		set := func(want bool) error {
			if attached == want {
				return nil
			}
			if want {
				if err := attachPod(dir, "pod", pod.Path, parent); err != nil {
					return err
				}
			} else {
				s, err := state.Open(dir, true)
				if err != nil {
					return err
				}
				err = s.Detach("pod")
				s.Close()
				if err != nil {
					return err
				}
			}
			attached = want
			return nil
		}
		run := func(withPod bool) func() (float64, error) {
			return func() (float64, error) {
				if err := set(withPod); err != nil {
					return 0, err
				}
				return iperfFrom(b, iperf, tasks, pod, addr, port, streamSecs)
			}
		}
		if podAcctErr = interleave(&podAcctResults, run(false), run(true)); podAcctErr != nil {
			return
		}
		if podAcctErr = set(true); podAcctErr != nil {
			return
		}
		progs, err := netnsAccountPrograms(dir)
		if err != nil {
			podAcctErr = err
			return
		}
		defer func() {
			for _, p := range progs {
				p.Close()
			}
		}()
		podAcctErr = programCost(&podAcctResults, progs, countedPackets(dir, "pod"), run(true))
	})
	if podAcctErr != nil {
		b.Fatal(podAcctErr)
	}
	podAcctResults.report(b, "cgroup_skb-netns")
}

// BenchmarkNetNSAccountingHostCost: what pods' accounting costs host
// traffic. While a namespace-keyed attachment exists, the namespace copy
// of the cgroup_skb programs runs for every packet of every task under
// its cgroup (the cgroup v2 root by default), and for a host socket it
// does one socket-storage lookup that misses. One iperf3 stream on
// loopback from a host task under that cgroup versus from one outside it,
// interleaved, and the programs' cost per host skb.
func BenchmarkNetNSAccountingHostCost(b *testing.B) {
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	hostAcctOnce.Do(func() {
		const port = 14203
		srv := exec.Command(iperf, "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
		if hostAcctErr = srv.Start(); hostAcctErr != nil {
			return
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		dir := testenv.StateDir(b)
		parent := testenv.Cgroup(b, "bench-netns-host")
		under := testenv.ChildCgroup(b, parent, "host-task")
		outside := testenv.Cgroup(b, "bench-netns-outside")
		pod := testenv.NewNetNS(b)
		if hostAcctErr = attachPod(dir, "pod", pod.Path, parent); hostAcctErr != nil {
			return
		}
		progs, err := netnsAccountPrograms(dir)
		if err != nil {
			hostAcctErr = err
			return
		}
		defer func() {
			for _, p := range progs {
				p.Close()
			}
		}()
		runOutside := func() (float64, error) { return iperfGbits(b, iperf, outside, port, streamSecs) }
		runUnder := func() (float64, error) { return iperfGbits(b, iperf, under, port, streamSecs) }
		if hostAcctErr = interleave(&hostAcctResult, runOutside, runUnder); hostAcctErr != nil {
			return
		}
		// The host's packets are counted nowhere: per skb only.
		hostAcctErr = programCost(&hostAcctResult, progs, func() (uint64, error) { return 0, nil }, runUnder)
	})
	if hostAcctErr != nil {
		b.Fatal(hostAcctErr)
	}
	hostAcctResult.report(b, "cgroup_skb-netns-host")
}
