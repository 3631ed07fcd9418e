package e2e

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/ocihook"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestRuncStopTerminatesClients: stopping a backend container under runc
// (poststop) destroys its clients' sockets. The backend lives in a network
// namespace of its own behind a veth; the link is taken down before the
// container is killed, as when its node dies, so no FIN, RST or ICMP ever
// reaches the clients: they hang until the poststop hook terminates them.
func TestRuncStopTerminatesClients(t *testing.T) {
	e := newRuncEnv(t)
	ns := testenv.NewNetNS(t)
	subnet := fmt.Sprintf("10.214.%d", rand.IntN(256))
	backendAddr := subnet + ".2"
	port := "24611"
	// Guarded for the test's duration (and after the veth is deleted at
	// cleanup): a segment for the subnet never follows the default route.
	testenv.Blackhole(t, subnet+".0/24")
	host, peer := "pcth"+testenv.Suffix(), "pctc"+testenv.Suffix()
	testenv.Run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	testenv.Run(t, "ip", "addr", "add", subnet+".1/24", "dev", host)
	testenv.Run(t, "ip", "link", "set", host, "up")
	ns.IP(t, "addr", "add", backendAddr+"/24", "dev", peer)
	ns.IP(t, "link", "set", peer, "up")

	suffix := testenv.Suffix()
	backend := e.start("pc-term-backend-"+suffix, e.bundle(bundleOptions{
		args: []string{"sh", "-c", "sockprobe listen -proto tcp -addr 0.0.0.0:" + port + " -name backend & " +
			"sockprobe listen -proto udp -addr 0.0.0.0:" + port + " -name backend & wait"},
		annotations: map[string]string{ocihook.AnnotationPolicy: fmt.Sprintf(`{"addresses": [%q]}`, backendAddr)},
		netns:       ns.Path,
	}))
	waitListening(t, ns, port, backendAddr+":"+port)

	// The client runs in the host's namespace and holds a TCP and a
	// connected UDP socket to the backend.
	target := backendAddr + ":" + port
	client := e.start("pc-term-client-"+suffix, e.bundle(bundleOptions{
		args: []string{"sh", "-c", "sockprobe connect -proto tcp -addr " + target + " -hold & " +
			"sockprobe connect -proto udp -addr " + target + " -hold & wait"},
		annotations: map[string]string{ocihook.AnnotationPolicy: `{}`},
	}))
	lines := func() []testenv.ProbeResult {
		var out []testenv.ProbeResult
		for _, line := range strings.Split(client.output(t), "\n") {
			if strings.HasPrefix(line, "{") {
				out = append(out, testenv.ParseProbe(t, line))
			}
		}
		return out
	}
	waitLines := func(n int) []testenv.ProbeResult {
		t.Helper()
		for i := 0; i < 100; i++ {
			if got := lines(); len(got) >= n {
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("client printed %d lines, want %d:\n%s", len(lines()), n, client.output(t))
		return nil
	}
	for _, r := range waitLines(2) {
		if !r.OK || r.Reply != "backend" {
			t.Fatalf("client: want connections answered by the backend, got %+v", r)
		}
	}

	// The backend's node goes away: its end of the link first, then the
	// container. The host keeps its route to the veth (marked linkdown),
	// so what the clients still send is dropped at the veth, on this host.
	// (Taking the host's end down would remove that route, and the UDP
	// client's datagrams would follow the default route instead.)
	ns.IP(t, "link", "set", peer, "down")
	if out, err := e.runc("kill", backend.id, "KILL"); err != nil {
		t.Fatalf("runc kill: %v\n%s", err, out)
	}
	for i := 0; ; i++ {
		out, _ := e.runc("state", backend.id)
		if strings.Contains(out, `"status": "stopped"`) {
			break
		}
		if i == 100 {
			t.Fatalf("backend did not stop:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := lines(); len(got) != 2 {
		t.Fatalf("before poststop the client should still hang, it printed %+v", got[2:])
	}

	// runc delete runs poststop: the hook detaches the backend and
	// terminates the sockets connected to its address.
	if out, err := e.runc("delete", backend.id); err != nil {
		t.Fatalf("runc delete: %v\n%s", err, out)
	}
	ended := waitLines(4)[2:]
	// TCP: ECONNABORTED. Connected UDP: ECONNABORTED in a blocked
	// receive (as here: no replies since the link went down), or
	// EDESTADDRREQ from a send on the now disconnected socket.
	aborted := 0
	for _, r := range ended {
		switch r.Errno {
		case "ECONNABORTED":
			aborted++
		case "EDESTADDRREQ":
		default:
			t.Errorf("after poststop: client ended with %+v, want its socket destroyed", r)
		}
	}
	if aborted == 0 {
		t.Errorf("after poststop: no client saw ECONNABORTED: %+v", ended)
	}
	t.Logf("clients ended with %+v", ended)
}
