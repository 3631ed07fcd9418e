package bypass

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// Debian's nginx and redis-server with their stock listen/bind lines, in
// IPv4-only and dual-stack containers: they must start unmodified, serve
// on the container's address, and two of them share a port.

const (
	nginxPort = "26080"
	redisPort = "26379"
	// The servers' containers: two IPv4-only, one dual-stack.
	srvV4a = "127.10.0.5"
	srvV4b = "127.10.0.7"
	srvDS  = "127.10.0.8"
	srvDS6 = "fd10::8"
)

// nginxSite writes an nginx.conf whose server block has the shape of
// Debian's default site (`listen 80 default_server; listen [::]:80
// default_server;`) on nginxPort, with every path in dir (seen as root
// inside a container), and an index.html saying name.
func nginxSite(t *testing.T, dir, root, name string) {
	t.Helper()
	conf := fmt.Sprintf(`user root;
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s default_server;
		listen [::]:%[2]s default_server;
		root %[1]s/html;
		index index.html;
	}
}
`, root, nginxPort)
	if err := os.MkdirAll(filepath.Join(dir, "html"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "html", "index.html"), []byte(name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func nginxArgs(root string) []string {
	return []string{"nginx", "-p", root, "-c", root + "/nginx.conf", "-e", "stderr"}
}

// redis-server with no configuration file binds its default `* -::*`.
func redisArgs(root string) []string {
	return []string{"redis-server", "--port", redisPort, "--dir", root, "--save", "", "--appendonly", "no"}
}

// ask sends req to addr from a host process's socket in the namespace
// and returns the first line of the answer, retrying while the server
// starts.
func ask(t *testing.T, netns *testenv.NetNS, addr, req string, why func() string) string {
	t.Helper()
	var err error
	for i := 0; i < 100; i++ {
		var line string
		if line, err = askOnce(netns, addr, req); err == nil {
			return line
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%q to %s: %v\n%s", req, addr, err, why())
	return ""
}

func askOnce(netns *testenv.NetNS, addr, req string) (string, error) {
	var conn net.Conn
	err := ns.WithNetNSPath(netns.Path, func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		return "", err
	}
	data, err := io.ReadAll(conn)
	if len(data) == 0 {
		return "", fmt.Errorf("no answer: %v", err)
	}
	if strings.HasPrefix(req, "GET") {
		// The page: after the headers.
		_, body, ok := strings.Cut(string(data), "\r\n\r\n")
		if !ok || !strings.HasPrefix(string(data), "HTTP/1.1 200") {
			return "", fmt.Errorf("answer %q", data)
		}
		return strings.TrimSpace(body), nil
	}
	line, _, _ := strings.Cut(string(data), "\r\n")
	return line, nil
}

// checkServers asserts what two IPv4-only and one dual-stack container
// running nginx (and redis in one of each kind) must show.
func checkServers(t *testing.T, netns *testenv.NetNS, why func() string) {
	t.Helper()
	for addr, want := range map[string]string{
		srvV4a + ":" + nginxPort:        "v4a",
		srvV4b + ":" + nginxPort:        "v4b",
		srvDS + ":" + nginxPort:         "ds",
		"[" + srvDS6 + "]:" + nginxPort: "ds",
		srvV4a + ":" + redisPort:        "+PONG",
		// Redis' protected mode answers clients from a non-loopback
		// source, and a host client of fd10::8 comes from fd10::8:
		// redis is up and serving there.
		"[" + srvDS6 + "]:" + redisPort: "-DENIED Redis is running in protected mode",
		srvDS + ":" + redisPort:         "+PONG",
	} {
		req := "GET / HTTP/1.0\r\n\r\n"
		if strings.HasSuffix(addr, redisPort) {
			req = "PING\r\nQUIT\r\n"
		}
		got := ask(t, netns, addr, req, why)
		if !strings.HasPrefix(got, want) {
			t.Fatalf("%s answered %q, want %q", addr, got, want)
		}
	}
	// Nobody holds the wildcard: each listener is on its container's
	// address (the IPv4-only containers' v6-only sockets sit on ::1).
	var port uint16
	fmt.Sscan(nginxPort, &port)
	got := strings.Join(sorted(netns.Listening(t, "tcp", port)), " ")
	want := strings.Join(sorted([]string{srvV4a + ":" + nginxPort, srvV4b + ":" + nginxPort,
		srvDS + ":" + nginxPort, "[" + srvDS6 + "]:" + nginxPort}), " ")
	if got != want {
		t.Fatalf("listeners on %s: %s, want %s", nginxPort, got, want)
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func serverPolicy(addrs ...string) string {
	q, _ := json.Marshal(addrs)
	return fmt.Sprintf(`{"addresses": %s, "allowedPorts": [%q, %q]}`, q, nginxPort, redisPort)
}

// TestServersUnderAttach runs the servers in cgroups attached with the
// portcullisctl binary.
func TestServersUnderAttach(t *testing.T) {
	testenv.RequireCommand(t, "nginx", "nginx-light")
	testenv.RequireCommand(t, "redis-server", "redis-server")
	dir := testenv.StateDir(t)
	ctl := testenv.Binary(t, "./cmd/portcullisctl")
	ns := testenv.NewNetNS(t)
	ns.IP(t, "addr", "add", srvDS6+"/128", "dev", "lo", "nodad")

	var procs []*testenv.Proc
	why := func() string {
		var b strings.Builder
		for _, p := range procs {
			fmt.Fprintf(&b, "%v: %s\n", p.Cmd.Args, p.Stderr())
		}
		return b.String()
	}
	for _, c := range []struct {
		name  string
		addrs []string
		redis bool
	}{{"v4a", []string{srvV4a}, true}, {"v4b", []string{srvV4b}, false}, {"ds", []string{srvDS, srvDS6}, true}} {
		cg := testenv.Cgroup(t, "srv-"+c.name)
		policyFile := filepath.Join(t.TempDir(), "policy.json")
		os.WriteFile(policyFile, []byte(serverPolicy(c.addrs...)), 0o644)
		if out, err := exec.Command(ctl, "attach", "--cgroup", cg.Path, "--policy", policyFile,
			"--id", "srv-"+c.name, "--netns", ns.Path, "--state-dir", dir).CombinedOutput(); err != nil {
			t.Fatalf("portcullisctl attach: %v\n%s", err, out)
		}
		root := t.TempDir()
		nginxSite(t, root, root, c.name)
		procs = append(procs, testenv.Start(t, cg, ns.Command(nginxArgs(root)...)))
		if c.redis {
			procs = append(procs, testenv.Start(t, cg, ns.Command(redisArgs(root)...)))
		}
		// nginx's workers outlive a killed master and hold its output
		// open: kill the whole cgroup before the processes are reaped
		// (cleanups run last-in first-out).
		t.Cleanup(func() { os.WriteFile(filepath.Join(cg.Path, "cgroup.kill"), []byte("1"), 0) })
	}
	checkServers(t, ns, why)
	for _, p := range procs {
		if strings.Contains(p.Stderr(), "failed") || strings.Contains(p.Stderr(), "Could not create") {
			t.Fatalf("%v reported a failure: %s", p.Cmd.Args, p.Stderr())
		}
	}
}

// TestServersUnderRunc runs the same servers in runc containers whose
// config.json names portcullis-hook, with the host's /usr and /etc
// mounted read-only.
func TestServersUnderRunc(t *testing.T) {
	testenv.RequireCommand(t, "runc", "runc")
	testenv.RequireCommand(t, "nginx", "nginx-light")
	testenv.RequireCommand(t, "redis-server", "redis-server")
	dir := testenv.StateDir(t)
	hook := testenv.Binary(t, "./hooks/portcullis-hook")
	probe := testenv.Binary(t, "./test/sockprobe")
	ns := testenv.NewNetNS(t)
	ns.IP(t, "addr", "add", srvDS6+"/128", "dev", "lo", "nodad")
	runcRoot := filepath.Join(t.TempDir(), "runc")
	runc := func(args ...string) (string, error) {
		out, err := exec.Command("runc", append([]string{"--root", runcRoot}, args...)...).CombinedOutput()
		return string(out), err
	}

	var logs []string
	why := func() string {
		var b strings.Builder
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			fmt.Fprintf(&b, "%s:\n%s\n", l, data)
		}
		return b.String()
	}
	var ids []string
	for _, c := range []struct {
		name  string
		addrs []string
		args  []string
	}{
		{"v4a", []string{srvV4a}, nil},
		{"v4b", []string{srvV4b}, nil},
		{"ds", []string{srvDS, srvDS6}, nil},
	} {
		id := "pc-srv-" + c.name + "-" + testenv.Suffix()
		bundle := t.TempDir()
		srv := filepath.Join(bundle, "srv")
		nginxSite(t, srv, "/srv", c.name)
		copyTo(t, probe, filepath.Join(srv, "sockprobe"))
		// Both servers in one container: a shell starts redis and
		// becomes nginx.
		script := "redis-server --port " + redisPort + " --dir /srv --save '' --appendonly no & exec " + strings.Join(nginxArgs("/srv"), " ")
		writeBundle(t, bundle, []string{"/bin/sh", "-c", script}, ns.Path, hook, dir,
			map[string]string{ocihook.AnnotationPolicy: serverPolicy(c.addrs...)})
		log := filepath.Join(bundle, "output")
		logs = append(logs, log)
		out, err := os.Create(log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("runc", "--root", runcRoot, "run", "--detach", "--bundle", bundle, id)
		cmd.Stdout, cmd.Stderr = out, out
		t.Cleanup(func() { runc("delete", "--force", id) })
		if err := cmd.Run(); err != nil {
			out.Close()
			t.Fatalf("runc run %s: %v\n%s", id, err, why())
		}
		out.Close()
		ids = append(ids, id)
	}
	checkServers(t, ns, why)

	// runc's default capabilities leave out CAP_NET_RAW, so packet
	// sockets (which no cgroup hook sees) are refused; raw sockets are
	// refused by portcullis as well.
	for _, kind := range []string{"packet", "raw"} {
		out, _ := runc("exec", ids[0], "/srv/sockprobe", kind, "-addr", srvV4b+":0")
		if r := testenv.ParseProbe(t, strings.TrimSpace(out)); r.OK || r.Errno != "EPERM" {
			t.Fatalf("%s socket in a runc container: %+v, want EPERM", kind, r)
		}
	}
	for _, id := range ids {
		runc("kill", id, "KILL")
	}
}

// writeBundle writes config.json: `runc spec` with the host's /usr (and
// the usual symlinks) and /etc read-only, the bundle's srv/ at /srv, the
// network namespace ns, and the hook at createRuntime and poststop.
func writeBundle(t *testing.T, bundle string, args []string, ns, hook, stateDir string, annotations map[string]string) {
	t.Helper()
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"usr", "etc", "srv", "proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(rootfs, l)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("runc", "spec")
	cmd.Dir = bundle
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Process.Rlimits = nil // raising them is not permitted here
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Process.Env = []string{"PATH=/usr/sbin:/usr/bin"}
	// nginx's master sets its workers' user and groups.
	caps := spec.Process.Capabilities
	for _, c := range []string{"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE"} {
		caps.Bounding = append(caps.Bounding, c)
		caps.Effective = append(caps.Effective, c)
		caps.Permitted = append(caps.Permitted, c)
	}
	spec.Root.Readonly = false
	for _, m := range []struct{ src, dst, opt string }{
		{"/usr", "/usr", "ro"}, {"/etc", "/etc", "ro"}, {filepath.Join(bundle, "srv"), "/srv", "rw"},
	} {
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: m.dst, Type: "bind", Source: m.src, Options: []string{"rbind", m.opt}})
	}
	var namespaces []specs.LinuxNamespace
	for _, n := range spec.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace {
			namespaces = append(namespaces, n)
		}
	}
	spec.Linux.Namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: ns})
	h := func(stage string) []specs.Hook {
		return []specs.Hook{{Path: hook, Args: []string{"portcullis-hook", stage}, Env: []string{"PORTCULLIS_STATE_DIR=" + stateDir}}}
	}
	spec.Hooks = &specs.Hooks{CreateRuntime: h("createRuntime"), Poststop: h("poststop")}
	spec.Annotations = annotations
	out, err := json.MarshalIndent(&spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyTo(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}
