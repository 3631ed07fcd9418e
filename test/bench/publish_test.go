package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// BenchmarkPublishedPort compares host-port publishing by portcullis
// (connect-time translation at the socket layer) with the reference portmap
// plugin (iptables DNAT), in one run: two containers behind two bridges in
// a test-made host namespace, each running nginx on port 80, one published
// by each. From the host namespace, on the host's address: the p50 of
// connect+close, alternating sides, and the rate of short requests (wrk,
// one connection per request).
func BenchmarkPublishedPort(b *testing.B) {
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat("/usr/lib/cni/" + p); err != nil {
			b.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	nginx := testenv.RequireCommand(b, "nginx", "nginx-light")
	wrk := testenv.RequireCommand(b, "wrk", "wrk")
	testenv.RequireCommand(b, "iptables", "iptables")
	plugin := testenv.Binary(b, "./plugins/portcullis")
	stateDir := testenv.StateDir(b)
	bin := b.TempDir()
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap", plugin} {
		os.Symlink(p, filepath.Join(bin, filepath.Base(p)))
	}
	host := testenv.NewNetNS(b)
	// The host's address the clients dial (one end of a veth pair).
	const hostAddr = "10.20.5.1"
	host.IP(b, "link", "add", "pcbench0", "type", "veth", "peer", "name", "pcbench1")
	host.IP(b, "addr", "add", hostAddr+"/32", "dev", "pcbench0")
	host.IP(b, "link", "set", "pcbench1", "up")
	host.IP(b, "link", "set", "pcbench0", "up")

	cfg := libcni.NewCNIConfigWithCacheDir([]string{bin}, b.TempDir(), nil)
	ports := map[string]int{"portcullis": 20081, "portmap": 20082}
	subnets := map[string]string{"portcullis": "10.20.6.0/24", "portmap": "10.20.7.0/24"}
	for _, side := range []string{"portcullis", "portmap"} {
		last := fmt.Sprintf(`{"type": "portcullis", "capabilities": {"portMappings": true}, "stateDir": %q}`, stateDir)
		if side == "portmap" {
			last = `{"type": "portmap", "capabilities": {"portMappings": true}}`
		}
		list, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pc-bench-%s", "plugins": [
			{"type": "bridge", "bridge": "pcbr%s", "isGateway": true, "ipMasq": false,
			 "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}}, %s]}`,
			side, testenv.Suffix(), subnets[side], b.TempDir(), last)))
		if err != nil {
			b.Fatal(err)
		}
		container := testenv.NewNetNS(b)
		rt := &libcni.RuntimeConf{ContainerID: "pc-bench-" + side, NetNS: container.Path, IfName: "eth0",
			CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": ports[side], "containerPort": 80, "protocol": "tcp"}}}}
		err = ns.WithNetNSPath(host.Path, func(ns.NetNS) error {
			_, err := cfg.AddNetworkList(context.Background(), list, rt)
			return err
		})
		if err != nil {
			b.Fatalf("ADD %s: %v", side, err)
		}
		b.Cleanup(func() {
			ns.WithNetNSPath(host.Path, func(ns.NetNS) error { return cfg.DelNetworkList(context.Background(), list, rt) })
		})
		startNginx(b, nginx, container)
	}

	// Both sides answer.
	for side, port := range ports {
		if _, err := dialFrom(host, hostAddr, port); err != nil {
			b.Fatalf("%s: connect to %s:%d: %v", side, hostAddr, port, err)
		}
	}
	const runs = 2000
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < runs; i++ {
		for _, side := range []string{"portcullis", "portmap"} {
			d, err := dialFrom(host, hostAddr, ports[side])
			if err != nil {
				b.Fatal(err)
			}
			times[side] = append(times[side], d)
		}
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for _, side := range []string{"portcullis", "portmap"} {
		b.ReportMetric(us(percentile(times[side], 50)), "us/p50-connect-"+side)
	}
	b.ReportMetric(float64(percentile(times["portcullis"], 50))/float64(percentile(times["portmap"], 50)), "ratio-p50-connect")

	rates := map[string]float64{}
	for _, side := range []string{"portcullis", "portmap"} {
		out, err := host.Command(wrk, "-t", "1", "-c", "8", "-d", "3s", "-H", "Connection: close",
			fmt.Sprintf("http://%s:%d/", hostAddr, ports[side])).CombinedOutput()
		m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindSubmatch(out)
		if err != nil || m == nil {
			b.Fatalf("wrk %s: %v\n%s", side, err, out)
		}
		rates[side], _ = strconv.ParseFloat(string(m[1]), 64)
		b.ReportMetric(rates[side], "req/s-"+side)
	}
	b.ReportMetric(rates["portcullis"]/rates["portmap"], "ratio-req/s")
}

// dialFrom connects from the host namespace to addr:port and closes (RST, so
// no TIME_WAIT piles up), returning how long connect took.
func dialFrom(host *testenv.NetNS, addr string, port int) (time.Duration, error) {
	var d time.Duration
	err := ns.WithNetNSPath(host.Path, func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		var ip [4]byte
		fmt.Sscanf(addr, "%d.%d.%d.%d", &ip[0], &ip[1], &ip[2], &ip[3])
		start := time.Now()
		err = unix.Connect(fd, &unix.SockaddrInet4{Addr: ip, Port: port})
		d = time.Since(start)
		return err
	})
	return d, err
}

// startNginx runs nginx-light in the container's namespace with a
// configuration of the benchmark's own: one worker, port 80, a fixed
// short answer.
func startNginx(b *testing.B, nginx string, container *testenv.NetNS) {
	b.Helper()
	dir := b.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s;
  proxy_temp_path %s;
  fastcgi_temp_path %s;
  uwsgi_temp_path %s;
  scgi_temp_path %s;
  server { listen 80; location / { return 200 "ok\n"; } }
}
`, dir, dir, dir, dir, dir, dir, dir)), 0o644)
	testenv.Start(b, testenv.Cgroup(b, "bench-nginx"), container.Command(nginx, "-p", dir, "-c", conf))
	for i := 0; ; i++ {
		out, _ := exec.Command("nsenter", "--net="+container.Path, "ss", "-Hltn", "sport = :80").Output()
		if strings.TrimSpace(string(out)) != "" {
			return
		}
		if i == 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			b.Fatalf("nginx does not listen in the container:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
