package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/multihost"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/test/testenv"
)

const (
	mhServices = 1000 // loaded services on host B, each with mhBackends remote backends
	mhBackends = 10
	mhRounds   = 30
	mhFrontend = "127.17.1.1:17432"
)

// BenchmarkMultiHostPropagation measures how long a provider that starts
// (or stops) listening on host A takes to appear in (or leave) host B's
// service maps through etcd and two `portcullisctl sync`s, while B holds
// 1,000 other services × 10 remote backends (declared on B, so A adopts
// them and holds them too); and how many etcd writes that costs. A connect on B picks a backend as soon as its slot is in
// the maps, so the time until the slot is there is the time until B's
// clients reach the provider.
func BenchmarkMultiHostPropagation(b *testing.B) {
	if b.N == 1 {
		return // the 1x probe run; the measured run sets its own rounds
	}
	members, _ := testenv.EtcdAddrs(b, 3)
	cluster := testenv.StartEtcd(b, members...)
	b.Setenv("PORTCULLIS_SERVICES_DIR", b.TempDir())
	ctl, probe := testenv.Binary(b, "./cmd/portcullisctl"), testenv.Binary(b, "./test/sockprobe")
	dirA, dirB := testenv.StateDir(b), testenv.StateDir(b)
	nsA := testenv.NewNetNS(b)
	nsA.IP(b, "link", "add", "d17", "type", "veth", "peer", "name", "d17p") // no dummy module here
	nsA.IP(b, "addr", "add", "10.17.0.1/24", "dev", "d17")
	nsA.IP(b, "link", "set", "d17", "up")
	fe, _ := services.ParseEndpoint(mhFrontend)
	db := services.Declaration{Name: "db", Frontends: []services.Endpoint{fe}}
	provider := testenv.Cgroup(b, "bench-mh-provider")
	testenv.Attach(b, dirA, "provider", provider.Path, `{"addresses": ["10.17.0.1"], "provides": [{"service": "db", "port": 17432, "protocol": "tcp"}]}`, nsA.Path)
	decls := []services.Declaration{db}
	for i := 0; i < mhServices; i++ {
		fe, _ := services.ParseEndpoint(fmt.Sprintf("127.17.3.1:%d", 17000+i))
		decls = append(decls, services.Declaration{Name: fmt.Sprintf("load-%d", i), Frontends: []services.Endpoint{fe}})
	}
	for dir, list := range map[string][]services.Declaration{dirA: {db}, dirB: decls} {
		s, err := state.OpenOrLoad(dir)
		if err != nil {
			b.Fatal(err)
		}
		err = s.ApplyServices(list)
		s.Close()
		if err != nil {
			b.Fatal(err)
		}
	}

	// The load: 10,000 backends of a third node, held by its lease.
	c := cluster.Client()
	ctx := context.Background()
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.KeepAlive(ctx, lease.ID); err != nil {
		b.Fatal(err)
	}
	var ops []clientv3.Op
	flush := func() {
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := 0; i < mhServices; i++ {
		for j := 0; j < mhBackends; j++ {
			bk := multihost.Backend{Service: fmt.Sprintf("load-%d", i), Node: "load", Endpoint: services.Endpoint{
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 17, byte(1 + i/250), byte(i % 250)}), uint16(17000+j)), Protocol: "tcp"}}
			v, _ := json.Marshal(bk)
			ops = append(ops, clientv3.OpPut("/portcullis/backends/"+bk.Key(), string(v), clientv3.WithLease(lease.ID)))
			if len(ops) == 100 {
				flush()
			}
		}
	}
	flush()

	syncs := map[string]*testenv.Proc{}
	for name, dir := range map[string]string{"a": dirA, "b": dirB} {
		p := testenv.Start(b, cgroup.Cgroup{}, exec.Command(ctl, "--state-dir", dir, "sync", "--etcd", cluster.Endpoints(), "--node", name))
		syncs[name] = p
		b.Cleanup(func() {
			if b.Failed() {
				b.Logf("sync %s:\n%s", name, p.Stderr())
			}
		})
	}
	mB, err := services.Open(dirB)
	if err != nil {
		b.Fatal(err)
	}
	defer mB.Close()
	// Wait for the load to be in B's maps.
	loaded := func() bool {
		list, err := mB.List()
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for i := range list {
			n += len(services.RemotesOf(&list[i]))
		}
		return n == mhServices*mhBackends
	}
	deadline := time.Now().Add(60 * time.Second)
	for !loaded() {
		if time.Now().After(deadline) {
			b.Fatal("the 10,000 remote backends never reached B's maps")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// B publishes its 1,001 declarations and A adopts the 1,000 it does
	// not declare itself, with their 10,000 remote backends: both hosts
	// hold the load before the rounds start, and the rounds' etcd writes
	// are the changes only.
	mA, err := services.Open(dirA)
	if err != nil {
		b.Fatal(err)
	}
	defer mA.Close()
	adopted := func() bool {
		r, err := c.Get(ctx, "/portcullis/services/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			b.Fatal(err)
		}
		if r.Count != mhServices+2 { // db on A and on B, and B's load
			return false
		}
		list, err := mA.List()
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for i := range list {
			if list[i].DeclaredBy == "b" {
				n += len(services.RemotesOf(&list[i]))
			}
		}
		return n == mhServices*mhBackends
	}
	for !adopted() {
		if time.Now().After(deadline) {
			b.Fatal("A never adopted B's 1,000 declarations with their 10,000 remote backends")
		}
		time.Sleep(200 * time.Millisecond)
	}
	remotes := func() int {
		svc, err := mB.Get("db")
		if err != nil {
			b.Fatal(err)
		}
		return len(services.RemotesOf(svc))
	}
	waitFor := func(n int) time.Duration {
		start := time.Now()
		for remotes() != n {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("db on B never had %d remote backends", n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return time.Since(start)
	}

	rev := func() int64 {
		r, err := c.Get(ctx, "/portcullis/none")
		if err != nil {
			b.Fatal(err)
		}
		return r.Header.Revision
	}
	rev0, t0 := rev(), time.Now()
	cpuA0, cpuB0 := cpuTicks(b, syncs["a"]), cpuTicks(b, syncs["b"])
	var up, down []time.Duration
	b.ResetTimer()
	for i := 0; i < mhRounds; i++ {
		p := testenv.Start(b, provider, nsA.Command(probe, "listen", "-proto", "tcp", "-addr", "10.17.0.1:17432", "-name", "A"))
		if r := testenv.ParseProbe(b, p.Line(b, 5*time.Second)); !r.OK {
			b.Fatalf("provider: %+v", r)
		}
		up = append(up, waitFor(1))
		p.Kill()
		down = append(down, waitFor(0))
	}
	b.StopTimer()
	writes, elapsed := rev()-rev0, time.Since(t0)
	// What each sync costs meanwhile (USER_HZ 100): B polls its 1,001
	// declarations every second, A holds 1,000 adopted services.
	b.ReportMetric(float64(cpuTicks(b, syncs["a"])-cpuA0)/elapsed.Seconds(), "sync-a-cpu-%")
	b.ReportMetric(float64(cpuTicks(b, syncs["b"])-cpuB0)/elapsed.Seconds(), "sync-b-cpu-%")
	b.ReportMetric(svcPercentile(up, 0.5)/1e6, "p50-listen-ms")
	b.ReportMetric(svcPercentile(up, 0.99)/1e6, "p99-listen-ms")
	b.ReportMetric(svcPercentile(down, 0.5)/1e6, "p50-removed-ms")
	b.ReportMetric(svcPercentile(down, 0.99)/1e6, "p99-removed-ms")
	b.ReportMetric(float64(writes)/float64(2*mhRounds), "etcd-writes/change")
	b.ReportMetric(float64(writes)/elapsed.Seconds(), "etcd-writes/s")
}

// cpuTicks is the user and system time a process used, in clock ticks
// (/proc/PID/stat fields 14 and 15).
func cpuTicks(b *testing.B, p *testenv.Proc) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime
}
