package e2e

// Host-port publishing for containers with a network namespace of their
// own, driven by cnitool (CAP_ARGS portMappings) on bridge + host-local +
// portcullis inside a test-made "host" namespace, so that no route, address
// or iptables rule touches the real host.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/test/crienv"
	"github.com/portcullis-net/portcullis/test/testenv"
)

const (
	publishHostPort = "20080"
	publishCtrPort  = "80"
	publishHostAddr = "10.20.3.1" // on a test-made interface of the host namespace
)

type publishEnv struct {
	t        *testing.T
	dir      string
	host     *testenv.NetNS
	stateDir string
	logFile  string
	network  string
	busybox  string
}

// newPublish writes a conflist of bridge + host-local + portcullis (and
// portmap after it when withPortmap), both taking portMappings.
func newPublish(t *testing.T, withPortmap bool) *publishEnv {
	t.Helper()
	if _, err := os.Stat("/usr/local/bin/cnitool"); err != nil {
		t.Fatal("cnitool is not installed at /usr/local/bin/cnitool (scripts/install-deps.sh: go install github.com/containernetworking/cni/cnitool@v1.3.0)")
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			t.Fatalf("reference CNI plugin %s is not installed (apt-get install containernetworking-plugins)", p)
		}
	}
	e := &publishEnv{t: t, dir: t.TempDir(), host: testenv.NewNetNS(t), stateDir: testenv.StateDir(t),
		network: "pc-pub-" + testenv.Suffix(), busybox: testenv.RequireCommand(t, "busybox", "busybox-static")}
	e.logFile = filepath.Join(e.dir, "portcullis.log")
	for _, sub := range []string{"net.d", "bin", "ipam"} {
		os.MkdirAll(filepath.Join(e.dir, sub), 0o755)
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/portmap", testenv.Binary(t, "./plugins/portcullis")} {
		os.Symlink(p, filepath.Join(e.dir, "bin", filepath.Base(p)))
	}
	// No dummy driver on the test hosts: one end of a veth pair holds it.
	e.host.IP(t, "link", "add", "pcpub0", "type", "veth", "peer", "name", "pcpub1")
	e.host.IP(t, "addr", "add", publishHostAddr+"/32", "dev", "pcpub0")
	e.host.IP(t, "link", "set", "pcpub1", "up")
	e.host.IP(t, "link", "set", "pcpub0", "up")
	plugins := []any{
		map[string]any{"type": "bridge", "bridge": "pcbr" + testenv.Suffix(), "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": "10.20.2.0/24"}}},
				"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": filepath.Join(e.dir, "ipam")}},
		map[string]any{"type": "portcullis", "capabilities": map[string]bool{"portMappings": true},
			"stateDir": e.stateDir, "logFile": e.logFile, "policy": map[string]any{"allowedPorts": []string{"20800-20899"}}},
	}
	if withPortmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
	}
	writeJSON(t, filepath.Join(e.dir, "net.d", e.network+".conflist"), map[string]any{"cniVersion": "1.0.0", "name": e.network, "plugins": plugins})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log:\n%s", readLog(e.logFile))
		}
	})
	return e
}

// cnitool runs cnitool add/del in the host namespace for a container
// publishing hostPort (tcp) onto publishCtrPort.
func (e *publishEnv) cnitool(verb string, netns *testenv.NetNS, hostPort string) (string, error) {
	return e.cnitoolMappings(verb, netns, mapping(hostPort, "tcp", ""))
}

func mapping(hostPort, protocol, hostIP string) map[string]any {
	m := map[string]any{"hostPort": atoi(hostPort), "containerPort": atoi(publishCtrPort), "protocol": protocol}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

// cnitoolMappings runs cnitool add/del with these portMappings (CAP_ARGS)
// in the host namespace, with libcni's cache in a private /var/lib
// (crienv.PrivateVarLib).
func (e *publishEnv) cnitoolMappings(verb string, netns *testenv.NetNS, mappings ...map[string]any) (string, error) {
	args, _ := json.Marshal(map[string]any{"portMappings": mappings})
	cmd := e.host.Command(crienv.PrivateVarLib(e.t, e.dir, "/usr/local/bin/cnitool", verb, e.network, netns.Path)...)
	cmd.Env = append(os.Environ(), "CNI_PATH="+filepath.Join(e.dir, "bin"), "NETCONFPATH="+filepath.Join(e.dir, "net.d"), "CAP_ARGS="+string(args))
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// container is a namespace with busybox httpd on publishCtrPort serving
// its name, started after ADD as runtimes do.
func (e *publishEnv) container(name string, mappings ...map[string]any) *testenv.NetNS {
	e.t.Helper()
	ns := testenv.NewNetNS(e.t)
	if len(mappings) == 0 {
		mappings = append(mappings, mapping(publishHostPort, "tcp", ""))
	}
	if out, err := e.cnitoolMappings("add", ns, mappings...); err != nil {
		e.t.Fatalf("cnitool add %s: %v\n%s\nplugin log:\n%s", name, err, out, readLog(e.logFile))
	}
	www := filepath.Join(e.dir, "www-"+name)
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte(name+"\n"), 0o644)
	testenv.Start(e.t, testenv.Cgroup(e.t, "pub"), ns.Command(e.busybox, "httpd", "-f", "-p", publishCtrPort, "-h", www))
	// The policy pins httpd's wildcard listener to the container's address.
	for i := 0; len(listening(e.t, ns, publishCtrPort)) != 1; i++ {
		if i == 100 {
			e.t.Fatalf("httpd in %s does not listen on %s", name, publishCtrPort)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ns
}

// wget fetches http://addr/ with busybox wget from netns (its -T option
// crashes busybox 1.35, hence timeout).
func (e *publishEnv) wget(netns *testenv.NetNS, addr string) (string, error) {
	out, err := netns.Command("timeout", "10", e.busybox, "wget", "-q", "-O", "-", "http://"+addr+"/").CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestPublishWithCnitool: a published port reaches busybox httpd in the
// container from the host on 127.0.0.1 and on the host's address on a
// test-made interface; the container binds its containerPort unchanged; a
// second container cannot publish the same host port; DEL removes the
// publication at once.
func TestPublishWithCnitool(t *testing.T) {
	e := newPublish(t, false)
	web := e.container("web")
	// The container's own listener is on containerPort, not remapped.
	if got := listening(t, web, publishHostPort); len(got) != 0 {
		t.Fatalf("listeners on the host port inside the container: %v", got)
	}
	for _, addr := range []string{"127.0.0.1:" + publishHostPort, publishHostAddr + ":" + publishHostPort, "[::1]:" + publishHostPort} {
		if out, err := e.wget(e.host, addr); err != nil || out != "web" {
			t.Fatalf("wget http://%s/ from the host: %v %q, want web", addr, err, out)
		}
	}
	// Nothing listens on the host port in the host namespace: it is
	// translated at connect time, not forwarded.
	if got := listening(t, e.host, publishHostPort); len(got) != 0 {
		t.Fatalf("listeners on the host port in the host namespace: %v", got)
	}

	// A second container asking for the same host port.
	other := testenv.NewNetNS(t)
	out, err := e.cnitool("add", other, publishHostPort)
	if err == nil || !strings.Contains(out, "host port "+publishHostPort+"/tcp is already published by attachment ") {
		t.Fatalf("second cnitool add for host port %s: %v\n%s", publishHostPort, err, out)
	}
	if list := cniAttachments(t, e.stateDir); len(list) != 1 {
		t.Fatalf("attachments after the refused ADD: %+v", list)
	}
	if out, err := e.wget(e.host, "127.0.0.1:"+publishHostPort); err != nil || out != "web" {
		t.Fatalf("the first publication after the refused ADD: %v %q", err, out)
	}

	// DEL: the publication goes at once.
	if out, err := e.cnitool("del", web, publishHostPort); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if out, err := e.wget(e.host, "127.0.0.1:"+publishHostPort); err == nil {
		t.Fatalf("wget after DEL: %q, want a refused connection", out)
	}
	for _, m := range []string{"publications", "host_addrs"} {
		if dump := strings.TrimSpace(testenv.Run(t, "bpftool", "-j", "map", "dump", "pinned", filepath.Join(e.stateDir, "maps", m))); dump != "[]" {
			t.Fatalf("map %s after DEL: %s", m, dump)
		}
	}
}

// TestPublishWithPortmap: portcullis and the reference portmap plugin in
// one conflist, both with portMappings. A client outside the host goes
// through portmap's DNAT; host-local clients are translated by portcullis
// first, so portmap's OUTPUT rules never see them (no double translation).
func TestPublishWithPortmap(t *testing.T) {
	testenv.RequireCommand(t, "iptables", "iptables")
	e := newPublish(t, true)
	e.container("web")
	// The outside: a namespace on a veth to the host namespace.
	outside := testenv.NewNetNS(t)
	e.host.IP(t, "link", "add", "pcout0", "type", "veth", "peer", "name", "pcout1", "netns", outside.Name)
	e.host.IP(t, "addr", "add", "10.20.4.1/24", "dev", "pcout0")
	e.host.IP(t, "link", "set", "pcout0", "up")
	outside.IP(t, "addr", "add", "10.20.4.2/24", "dev", "pcout1")
	outside.IP(t, "link", "set", "pcout1", "up")

	outputJumps := func() string {
		out := e.host.Exec(t, "iptables", "-w", "-t", "nat", "-L", "OUTPUT", "-v", "-x", "-n")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "CNI-HOSTPORT-DNAT") {
				return strings.Fields(line)[0]
			}
		}
		t.Fatalf("no CNI-HOSTPORT-DNAT jump in the host namespace's nat OUTPUT chain:\n%s", out)
		return ""
	}
	for _, addr := range []string{"127.0.0.1:" + publishHostPort, publishHostAddr + ":" + publishHostPort} {
		if out, err := e.wget(e.host, addr); err != nil || out != "web" {
			t.Fatalf("wget http://%s/ from the host with portmap chained too: %v %q", addr, err, out)
		}
	}
	if n := outputJumps(); n != "0" {
		t.Fatalf("portmap's OUTPUT DNAT saw %s packets of host-local clients, want 0 (portcullis translated them first)", n)
	}
	for i := 0; ; i++ {
		out, err := e.wget(outside, "10.20.4.1:"+publishHostPort)
		if err == nil && out == "web" {
			break
		}
		if i == 20 {
			t.Fatalf("wget from outside the host through portmap: %v %q", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPublishUDP: a udp mapping reaches a UDP echo server (sockprobe) in
// the container from an unconnected socket of the host (sendto to
// 127.0.0.1, v4-mapped 127.0.0.1 and the host's address), and the reply's
// source is what was dialled, not the container's address. A connected
// UDP socket too, from ::1 as well.
func TestPublishUDP(t *testing.T) {
	e := newPublish(t, false)
	probe := testenv.Binary(t, "./test/sockprobe")
	ctr := testenv.NewNetNS(t)
	if out, err := e.cnitoolMappings("add", ctr, mapping(publishHostPort, "udp", "")); err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	testenv.Start(t, testenv.Cgroup(t, "pub"), ctr.Command(probe, "listen", "-proto", "udp", "-addr", "0.0.0.0:"+publishCtrPort, "-name", "web"))
	for i := 0; len(ctr.Listening(t, "udp", uint16(atoi(publishCtrPort)))) != 1; i++ {
		if i == 100 {
			t.Fatal("the UDP server in the container does not listen")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := ctr.Listening(t, "udp", uint16(atoi(publishCtrPort))); !strings.HasPrefix(got[0], "10.20.2.") {
		t.Fatalf("the container's UDP server listens on %v, want its own address and containerPort", got)
	}
	for _, tc := range []struct{ addr, mode string }{
		{"127.0.0.1:" + publishHostPort, "-sendto"},
		{publishHostAddr + ":" + publishHostPort, "-sendto"},
		{"[::ffff:127.0.0.1]:" + publishHostPort, "-sendto"},
		{"127.0.0.1:" + publishHostPort, ""},
		{publishHostAddr + ":" + publishHostPort, ""},
		// A container with no IPv6 address is reached from ::1 by a
		// connected socket only (the kernel refuses an unconnected
		// IPv6 datagram rewritten to an IPv4 address).
		{"[::1]:" + publishHostPort, ""},
	} {
		args := []string{probe, "connect", "-proto", "udp", "-addr", tc.addr}
		if tc.mode != "" {
			args = append(args, tc.mode)
		}
		out, err := e.host.Command(args...).CombinedOutput()
		var r struct {
			OK       bool
			Peer     string
			PeerName string
			Reply    string
		}
		json.Unmarshal(out, &r)
		// Peer is the reply's source; PeerName getpeername's answer
		// (connected sockets).
		if err != nil || !r.OK || r.Reply != "web" || r.Peer != tc.addr || (tc.mode == "" && r.PeerName != tc.addr) {
			t.Fatalf("UDP %s to %s from the host: %v %s; want the reply \"web\" from %s", tc.mode, tc.addr, err, out, tc.addr)
		}
	}
	// Nothing listens on the host port in the host namespace.
	if got := e.host.Listening(t, "udp", uint16(atoi(publishHostPort))); len(got) != 0 {
		t.Fatalf("UDP listeners on the host port in the host namespace: %v", got)
	}
	// The tcp host port of the same number is not published.
	if out, err := e.wget(e.host, "127.0.0.1:"+publishHostPort); err == nil {
		t.Fatalf("TCP to the UDP-only host port: %q, want a refused connection", out)
	}
	if out, err := e.cnitoolMappings("del", ctr, mapping(publishHostPort, "udp", "")); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if out, err := e.host.Command(probe, "connect", "-proto", "udp", "-addr", "127.0.0.1:"+publishHostPort, "-sendto").CombinedOutput(); err == nil {
		t.Fatalf("UDP to the host port after DEL: %s, want no reply", out)
	}
}

// TestPublishHostIP: a mapping's hostIP narrows the publication to that
// host address: a connect to another of the host's addresses (or to
// loopback) is not translated.
func TestPublishHostIP(t *testing.T) {
	e := newPublish(t, false)
	e.container("onaddr", mapping(publishHostPort, "tcp", publishHostAddr))
	e.container("onlo", mapping("20081", "tcp", "127.0.0.1"))
	for _, tc := range []struct{ addr, want string }{
		{publishHostAddr + ":" + publishHostPort, "onaddr"},
		{"127.0.0.1:" + publishHostPort, ""},
		{"[::1]:" + publishHostPort, ""},
		{"127.0.0.1:20081", "onlo"},
		{publishHostAddr + ":20081", ""},
		{"[::1]:20081", ""},
	} {
		out, err := e.wget(e.host, tc.addr)
		if tc.want == "" && err == nil {
			t.Errorf("wget http://%s/: %q, want a refused connection (another hostIP is published)", tc.addr, out)
		}
		if tc.want != "" && (err != nil || out != tc.want) {
			t.Errorf("wget http://%s/: %v %q, want %s", tc.addr, err, out, tc.want)
		}
	}
}

// TestPublishHostAddressAddedLater: the host's addresses are not a
// snapshot of ADD time for a connecting host process: an address added to
// the host after ADD reaches the published port, and one removed no longer
// does (the kernel is asked at connect time, bpf/publish.h local_now).
func TestPublishHostAddressAddedLater(t *testing.T) {
	e := newPublish(t, false)
	e.container("web")
	const later = "10.20.3.7"
	e.host.IP(t, "addr", "add", later+"/32", "dev", "pcpub0")
	if out, err := e.wget(e.host, later+":"+publishHostPort); err != nil || out != "web" {
		t.Fatalf("wget http://%s:%s/ (an address added after ADD): %v %q, want web", later, publishHostPort, err, out)
	}
	// The address published at ADD goes away; a route keeps it
	// reachable, so only the translation could answer for it.
	e.host.IP(t, "addr", "del", publishHostAddr+"/32", "dev", "pcpub0")
	e.host.IP(t, "route", "add", publishHostAddr+"/32", "dev", "pcpub0")
	if out, err := e.wget(e.host, publishHostAddr+":"+publishHostPort); err == nil {
		t.Fatalf("wget http://%s:%s/ after the address was removed from the host: %q, want no answer", publishHostAddr, publishHostPort, out)
	}
	if out, err := e.wget(e.host, "127.0.0.1:"+publishHostPort); err != nil || out != "web" {
		t.Fatalf("wget http://127.0.0.1:%s/: %v %q, want web", publishHostPort, err, out)
	}
}
