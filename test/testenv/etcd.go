package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is a real etcd cluster on loopback addresses, one member per
// address, started by the test (Debian's etcd-server) and stopped by PID.
type Etcd struct {
	t       testing.TB
	bin     string
	addrs   []string
	alt     []string // a second client address per member (StartEtcdAlt)
	cluster string
	token   string
	dir     string
	procs   []*member
}

type member struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// ClientPort and peerPort are the ports every member listens on (each on
// its own loopback address).
const (
	ClientPort = 17379
	peerPort   = 17380
)

// EtcdAddrs picks n loopback addresses for members, 127.18.R.1 to .n, and
// n more, 127.18.R.21 on, for StartEtcdAlt, in a random R whose etcd
// ports are all free: the same test run at the same time by a suite in
// another worktree gets another R.
func EtcdAddrs(t testing.TB, n int) (addrs, alt []string) {
	t.Helper()
	for try := 0; try < 50; try++ {
		r := 1 + rand.IntN(250)
		addrs, alt = nil, nil
		free := true
		for i := 1; i <= n && free; i++ {
			addrs = append(addrs, fmt.Sprintf("127.18.%d.%d", r, i))
			alt = append(alt, fmt.Sprintf("127.18.%d.%d", r, 20+i))
			for _, hp := range []string{fmt.Sprintf("127.18.%d.%d:%d", r, i, ClientPort), fmt.Sprintf("127.18.%d.%d:%d", r, i, peerPort), fmt.Sprintf("127.18.%d.%d:%d", r, 20+i, ClientPort)} {
				l, err := net.Listen("tcp", hp)
				if err != nil {
					free = false
					break
				}
				l.Close()
			}
		}
		if free {
			return addrs, alt
		}
	}
	t.Fatal("no free loopback /24 for etcd members under 127.18.0.0/16")
	return nil, nil
}

// StartEtcd starts one member on each loopback address and waits until
// the cluster answers.
func StartEtcd(t testing.TB, addrs ...string) *Etcd {
	t.Helper()
	return StartEtcdAlt(t, addrs, nil)
}

// StartEtcdAlt is StartEtcd with member i also serving clients on alt[i]
// (AltEndpoints): a test cuts off one client by dropping the traffic to
// those addresses only.
func StartEtcdAlt(t testing.TB, addrs, alt []string) *Etcd {
	t.Helper()
	e := &Etcd{t: t, bin: RequireCommand(t, "etcd", "etcd-server"), addrs: addrs, alt: alt, token: "portcullis-" + Suffix(), dir: t.TempDir()}
	var peers []string
	for i, a := range addrs {
		peers = append(peers, fmt.Sprintf("m%d=http://%s:%d", i, a, peerPort))
	}
	e.cluster = strings.Join(peers, ",")
	e.procs = make([]*member, len(addrs))
	for i := range addrs {
		e.Start(i)
	}
	t.Cleanup(func() {
		for i := range e.procs {
			e.Kill(i)
		}
	})
	e.WaitHealthy(30 * time.Second)
	return e
}

// Endpoints are the client URLs, comma separated.
func (e *Etcd) Endpoints() string {
	var list []string
	for _, a := range e.addrs {
		list = append(list, fmt.Sprintf("http://%s:%d", a, ClientPort))
	}
	return strings.Join(list, ",")
}

// AltEndpoints are the second client URLs (StartEtcdAlt), comma separated.
func (e *Etcd) AltEndpoints() string {
	var list []string
	for _, a := range e.alt {
		list = append(list, fmt.Sprintf("http://%s:%d", a, ClientPort))
	}
	return strings.Join(list, ",")
}

// Start starts (or restarts, on its data dir) member i.
func (e *Etcd) Start(i int) {
	e.t.Helper()
	a := e.addrs[i]
	client := fmt.Sprintf("http://%s:%d", a, ClientPort)
	peer := fmt.Sprintf("http://%s:%d", a, peerPort)
	listen := client
	if i < len(e.alt) {
		listen += fmt.Sprintf(",http://%s:%d", e.alt[i], ClientPort)
	}
	cmd := exec.Command(e.bin, "--name", fmt.Sprintf("m%d", i), "--data-dir", filepath.Join(e.dir, fmt.Sprint(i)),
		"--listen-client-urls", listen, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", e.cluster, "--initial-cluster-state", "new", "--initial-cluster-token", e.token,
		"--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "error")
	logf, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("m%d.log", i)))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start etcd member %d: %v", i, err)
	}
	logf.Close()
	m := &member{cmd, make(chan struct{})}
	e.procs[i] = m
	go func() { cmd.Wait(); close(m.done) }()
}

// Kill SIGKILLs member i.
func (e *Etcd) Kill(i int) {
	if m := e.procs[i]; m != nil {
		m.cmd.Process.Kill()
		<-m.done
		e.procs[i] = nil
	}
}

// Leader is the index of the member that leads the cluster now.
func (e *Etcd) Leader() int {
	e.t.Helper()
	eps := strings.Split(e.Endpoints(), ",")
	c := e.Client()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i, ep := range eps {
			if e.procs[i] == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.Status(ctx, ep)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return i
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatal("etcd: no member leads the cluster")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Client connects to the given members (all when none).
func (e *Etcd) Client(members ...int) *clientv3.Client {
	e.t.Helper()
	eps := strings.Split(e.Endpoints(), ",")
	if len(members) > 0 {
		var some []string
		for _, i := range members {
			some = append(some, eps[i])
		}
		eps = some
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// WaitHealthy waits until a linearizable read succeeds on every running
// member.
func (e *Etcd) WaitHealthy(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for i := range e.addrs {
		if e.procs[i] == nil {
			continue
		}
		c := e.Client(i)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := c.Get(ctx, "health")
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("m%d.log", i)))
				e.t.Fatalf("etcd member %d not healthy after %s: %v\n%s", i, timeout, err, log)
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.Close()
	}
}
