package bench

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// totalBackends is loaded at every service count, spread over the
// services; the maps hold up to 131072.
const totalBackends = 100_000

// serviceWorld is a state with an attached client cgroup and n services
// holding totalBackends static backends. The measured service, frontend
// 10.96.0.1:80, has ten backends: local listeners on 127.0.0.1.
func serviceWorld(b *testing.B, n int, ports []int) cgroup.Cgroup {
	b.Helper()
	dir := testenv.StateDir(b)
	b.Setenv("PORTCULLIS_SERVICES_DIR", b.TempDir())
	client := testenv.Cgroup(b, "bench-svc")
	s, err := state.OpenOrLoad(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Attach(state.AttachRequest{ID: "client", Cgroup: client.Path, Policy: &policy.Policy{}}); err != nil {
		b.Fatal(err)
	}
	m, err := s.Services()
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	measured := services.Declaration{Name: "measured", Frontends: []services.Endpoint{ep(netip.MustParseAddr("10.96.0.1"), 80)}}
	for _, p := range ports {
		measured.Backends = append(measured.Backends, ep(netip.MustParseAddr("127.0.0.1"), p))
	}
	if err := m.Put(measured, nil); err != nil {
		b.Fatal(err)
	}
	// The other n-1 services share the remaining backends.
	per := (totalBackends - len(ports)) / max(n-1, 1)
	k := 0
	for i := 1; i < n; i++ {
		d := services.Declaration{
			Name:      "svc-" + strconv.Itoa(i),
			Frontends: []services.Endpoint{ep(netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)}), 80)},
		}
		for j := 0; j < per; j++ {
			d.Backends = append(d.Backends, ep(netip.AddrFrom4([4]byte{10, 98, byte(k >> 8), byte(k)}), 1+k>>16))
			k++
		}
		if err := m.Put(d, nil); err != nil {
			b.Fatal(err)
		}
	}
	return client
}

func ep(a netip.Addr, port int) services.Endpoint {
	return services.Endpoint{Addr: netip.AddrPortFrom(a, uint16(port)), Protocol: policy.TCP}
}

// listeners starts n TCP listeners on 127.0.0.1 that accept and close.
func listeners(b *testing.B, n int) []int {
	var ports []int
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func connectOnce(b *testing.B, addr [4]byte, port int) time.Duration {
	d, err := timedConnect(netip.AddrPortFrom(netip.AddrFrom4(addr), uint16(port)))
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func svcPercentile(d []time.Duration, p float64) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[int(float64(len(d)-1)*p)].Nanoseconds())
}

// BenchmarkServiceConnect: connect() latency through the frontend
// 10.96.0.1:80 versus directly to one of its backends, from the same
// attached cgroup, with 10, 1,000 and 10,000 services and 100,000 backends
// loaded. Blocks alternate so drift hits both sides.
func BenchmarkServiceConnect(b *testing.B) {
	// The frontend dialled from the host namespace; the other services'
	// frontends (10.97/16) and backends (10.98/16) are only loaded.
	testenv.Blackhole(b, "10.96.0.1")
	ports := listeners(b, 10)
	for _, n := range []int{10, 1_000, 10_000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			client := serviceWorld(b, n, ports)
			var viaFrontend, direct []time.Duration
			back := enterCgroup(b, client)
			defer back()
			b.ResetTimer()
			const block = 100
			for done := 0; done < b.N; done += block {
				for i := 0; i < min(block, b.N-done); i++ {
					direct = append(direct, connectOnce(b, [4]byte{127, 0, 0, 1}, ports[i%len(ports)]))
				}
				for i := 0; i < min(block, b.N-done); i++ {
					viaFrontend = append(viaFrontend, connectOnce(b, [4]byte{10, 96, 0, 1}, 80))
				}
			}
			b.StopTimer()
			b.ReportMetric(svcPercentile(direct, 0.5), "p50-direct-ns")
			b.ReportMetric(svcPercentile(direct, 0.99), "p99-direct-ns")
			b.ReportMetric(svcPercentile(viaFrontend, 0.5), "p50-frontend-ns")
			b.ReportMetric(svcPercentile(viaFrontend, 0.99), "p99-frontend-ns")
			b.ReportMetric(svcPercentile(viaFrontend, 0.5)/svcPercentile(direct, 0.5), "p50-ratio")
		})
	}
}

var (
	streamOnce    sync.Once
	streamResults [2]float64
	streamErr     error
)

// BenchmarkServiceStream: one long TCP stream (iperf3, 3 s) through a
// frontend versus directly to the iperf3 server. It measures once, whatever
// b.N is: a stream's throughput is not a per-operation cost.
func BenchmarkServiceStream(b *testing.B) {
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	streamOnce.Do(func() {
		port := 15201
		srv := exec.Command(iperf, "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
		if streamErr = srv.Start(); streamErr != nil {
			return
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		if streamErr = waitListening(port, 10*time.Second); streamErr != nil {
			return
		}
		testenv.Blackhole(b, "10.96.0.5")
		dir := testenv.StateDir(b)
		client := testenv.Cgroup(b, "bench-stream")
		s, err := state.OpenOrLoad(dir)
		if err != nil {
			streamErr = err
			return
		}
		defer s.Close()
		if _, err := s.Attach(state.AttachRequest{ID: "client", Cgroup: client.Path, Policy: &policy.Policy{}}); err != nil {
			streamErr = err
			return
		}
		d := services.Declaration{Name: "iperf", Frontends: []services.Endpoint{ep(netip.MustParseAddr("10.96.0.5"), 5201)},
			Backends: []services.Endpoint{ep(netip.MustParseAddr("127.0.0.1"), port)}}
		if streamErr = s.ApplyServices([]services.Declaration{d}); streamErr != nil {
			return
		}
		for i, target := range [][2]string{{"127.0.0.1", strconv.Itoa(port)}, {"10.96.0.5", "5201"}} {
			p := testenv.Start(b, client, exec.Command(iperf, "-c", target[0], "-p", target[1], "-t", "3", "-J"))
			var report struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			out := p.Output(b, 20*time.Second)
			if err := json.Unmarshal([]byte(out), &report); err != nil {
				streamErr = fmt.Errorf("iperf3 -c %s: %v: %s %s", target[0], err, out, p.Stderr())
				return
			}
			streamResults[i] = report.End.SumReceived.BitsPerSecond / 1e9
		}
	})
	if streamErr != nil {
		b.Fatal(streamErr)
	}
	b.ReportMetric(streamResults[0], "Gbit/s-direct")
	b.ReportMetric(streamResults[1], "Gbit/s-frontend")
	b.ReportMetric(streamResults[1]/streamResults[0], "ratio")
}

// waitListening waits until a TCP socket listens on 127.0.0.1:port, as ss
// shows it (a probing connect would be taken by iperf3 for a client).
func waitListening(port int, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command("ss", "-Hltn", fmt.Sprintf("src 127.0.0.1:%d", port)).Output()
		if err == nil && len(out) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on 127.0.0.1:%d after %v: %v", port, timeout, err)
		}
	}
}
