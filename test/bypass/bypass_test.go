package bypass

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// TestBypass runs every attempt of docs/security.md's table against one
// world of containers A, B (dual-stack), C (IPv4-only) and R (raw allowed).
func TestBypass(t *testing.T) {
	w := newWorld(t)
	ap := func(addr string, port int) string {
		return netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port)).String()
	}

	// --- addresses ---

	t.Run("bind another container's IPv4 address", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26001))
		// B's own bind of it works and gets the connections.
		w.server(t, w.b, ap(addrB, 26001), "-addr", ap(addrB, 26001), "-name", "B")
		if got := w.who(t, ap(addrB, 26001), 3); got["B"] != 3 {
			t.Fatalf("connections to B's address answered by %v", got)
		}
	})
	t.Run("bind another container's v4-mapped address", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap("::ffff:"+addrB, 26002))
		w.refused(t, w.a, "EPERM", "listen", "-proto", "udp", "-addr", ap("::ffff:"+addrB, 26002))
	})
	t.Run("bind another container's IPv6 address", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB6, 26003))
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB6, 26003), "-v6only")
	})
	t.Run("bind another container's address with IP_FREEBIND", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26004), "-freebind")
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap("10.10.0.99", 26004), "-freebind")
	})
	t.Run("bind another container's address with IP_TRANSPARENT", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26004), "-transparent")
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB6, 26004), "-transparent")
	})

	t.Run("a second attachment with B's address shares it", func(t *testing.T) {
		// A pod's containers list the same address: each may bind it,
		// and it stays theirs until the last one goes.
		cg := testenv.Cgroup(t, "bypass-b-sibling")
		testenv.Attach(t, w.dir, "bypass-b-sibling", cg.Path, `{"addresses": ["`+addrB+`"]}`, w.ns.Path)
		w.server(t, cg, ap(addrB, 26062), "-addr", "0.0.0.0:26062")
		testenv.Detach(t, w.dir, "bypass-b-sibling")
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26063))
	})

	// --- reuseport groups and shadowing ---

	t.Run("SO_REUSEPORT join a host listener", func(t *testing.T) {
		w.server(t, w.host, "127.0.0.1:26005", "-addr", "127.0.0.1:26005", "-reuseport", "-name", "host")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "127.0.0.1:26005", "-reuseport", "-name", "A")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "[::ffff:127.0.0.1]:26005", "-reuseport", "-name", "A")
		if got := w.who(t, "127.0.0.1:26005", 20); got["host"] != 20 {
			t.Fatalf("connections to the host's listener answered by %v", got)
		}
	})
	t.Run("SO_REUSEPORT join a host IPv6 listener", func(t *testing.T) {
		w.server(t, w.host, "[::1]:26006", "-addr", "[::1]:26006", "-reuseport", "-v6only", "-name", "host")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "[::1]:26006", "-reuseport", "-v6only")
		if got := w.who(t, "[::1]:26006", 10); got["host"] != 10 {
			t.Fatalf("connections answered by %v", got)
		}
	})
	t.Run("SO_REUSEPORT join another container's listener", func(t *testing.T) {
		w.server(t, w.b, "127.0.0.1:26007", "-addr", "127.0.0.1:26007", "-reuseport", "-name", "B")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "127.0.0.1:26007", "-reuseport")
		w.server(t, w.b, ap(addrB, 26008), "-addr", ap(addrB, 26008), "-reuseport", "-name", "B")
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26008), "-reuseport")
		if got := w.who(t, ap(addrB, 26008), 10); got["B"] != 10 {
			t.Fatalf("connections to B answered by %v", got)
		}
	})
	t.Run("SO_REUSEPORT shadow a host wildcard listener", func(t *testing.T) {
		// A more specific socket would take every connection to its
		// address from the host's wildcard one.
		w.server(t, w.host, "0.0.0.0:26009", "-addr", "0.0.0.0:26009", "-reuseport", "-name", "host")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "127.0.0.1:26009", "-reuseport")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-addr", "0.0.0.0:26009", "-reuseport")
		if got := w.who(t, "127.0.0.1:26009", 10); got["host"] != 10 {
			t.Fatalf("connections answered by %v", got)
		}
	})
	t.Run("SO_REUSEADDR shadow a host UDP socket", func(t *testing.T) {
		// sockprobe sets SO_REUSEADDR on every socket, as the host's.
		w.server(t, w.host, "0.0.0.0:26010", "-proto", "udp", "-addr", "0.0.0.0:26010", "-name", "host")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-proto", "udp", "-addr", "127.0.0.1:26010")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-proto", "udp", "-addr", "127.0.0.1:26010", "-reuseport")
		if r := w.connect(t, w.host, "-proto", "udp", "-addr", "127.0.0.1:26010"); r.Reply != "host" {
			t.Fatalf("datagram answered by %q", r.Reply)
		}
	})
	t.Run("SO_REUSEPORT join a host UDP socket", func(t *testing.T) {
		w.server(t, w.host, "[::1]:26011", "-proto", "udp", "-addr", "[::1]:26011", "-reuseport", "-v6only", "-name", "host")
		w.refused(t, w.a, "EADDRINUSE", "listen", "-proto", "udp", "-addr", "[::1]:26011", "-reuseport", "-v6only")
	})
	t.Run("host joins a container's group on shared loopback", func(t *testing.T) {
		// The container binds first; its SO_REUSEPORT is cleared, so the
		// host's later reuseport bind is refused by the kernel instead
		// of silently sharing the container's connections.
		w.server(t, w.a, "127.0.0.1:26012", "-addr", "127.0.0.1:26012", "-reuseport", "-name", "A")
		r := w.run(t, w.host, "listen", "-addr", "127.0.0.1:26012", "-reuseport", "-name", "host")
		if r.OK || r.Errno != "EADDRINUSE" {
			t.Fatalf("host reuseport bind beside the container: %+v, want EADDRINUSE", r)
		}
		w.server(t, w.a, "127.0.0.1:26013", "-proto", "udp", "-addr", "127.0.0.1:26013", "-name", "A")
		if r := w.run(t, w.host, "listen", "-proto", "udp", "-addr", "127.0.0.1:26013"); r.OK || r.Errno != "EADDRINUSE" {
			t.Fatalf("host SO_REUSEADDR UDP bind beside the container: %+v, want EADDRINUSE", r)
		}
	})
	t.Run("SO_REUSEPORT set after bind on shared loopback", func(t *testing.T) {
		r := w.refused(t, w.a, "EPERM", "listen", "-addr", "127.0.0.1:26014", "-reuseport-after")
		if r.Event != "setsockopt" {
			t.Fatalf("refused at %q, want setsockopt", r.Event)
		}
	})
	t.Run("SO_REUSEPORT within the container's own address", func(t *testing.T) {
		// Not an attack: a container's own sockets share a port.
		w.server(t, w.a, ap(addrA, 26015), "-addr", ap(addrA, 26015), "-reuseport", "-name", "A1")
		w.server(t, w.a, ap(addrA, 26015), "-addr", ap(addrA, 26015), "-reuseport", "-name", "A2")
		if got := w.who(t, ap(addrA, 26015), 30); got["A1"]+got["A2"] != 30 || got["A1"] == 0 || got["A2"] == 0 {
			t.Fatalf("connections to A's reuseport group answered by %v", got)
		}
	})

	// --- UDP source selection ---

	udpSink := func(t *testing.T, addr string) *testenv.Proc {
		return w.server(t, w.host, addr, "-proto", "udp", "-addr", addr, "-name", "sink")
	}
	t.Run("IP_PKTINFO another container's source", func(t *testing.T) {
		sink := udpSink(t, "127.0.0.1:26020")
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", "127.0.0.1:26020", "-pktinfo", addrB)
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", "[::ffff:127.0.0.1]:26020", "-pktinfo", "::ffff:"+addrB)
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", "127.0.0.1:26020", "-pktinfo", "10.10.0.99")
		// On a connected socket too: a control message makes the kernel
		// treat the send as unconnected and run the hook.
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", "127.0.0.1:26020", "-pktinfo", addrB, "-connected")
		// Its own address is fine, and is what the peer sees.
		w.connect(t, w.a, "-proto", "udp", "-addr", "127.0.0.1:26020", "-pktinfo", addrA)
		if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("the sink saw %s, want %s", got, addrA)
		}
	})
	t.Run("IPV6_PKTINFO another container's source", func(t *testing.T) {
		sink := udpSink(t, "[::1]:26021")
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", "[::1]:26021", "-pktinfo", addrB6)
		w.connect(t, w.a, "-proto", "udp", "-addr", "[::1]:26021", "-pktinfo", addrA6)
		if got := peer(t, sink); !strings.HasPrefix(got, "["+addrA6+"]:") {
			t.Fatalf("the sink saw %s, want %s", got, addrA6)
		}
	})
	t.Run("sendmmsg", func(t *testing.T) {
		sink := udpSink(t, ap(addrB, 26022))
		w.refused(t, w.a, "EPERM", "connect", "-proto", "udp", "-addr", ap(addrB, 26022), "-sendmmsg", "-pktinfo", addrB)
		w.connect(t, w.a, "-proto", "udp", "-addr", ap(addrB, 26022), "-sendmmsg")
		for i := 0; i < 2; i++ {
			if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
				t.Fatalf("datagram %d came from %s, want %s", i, got, addrA)
			}
		}
	})

	// --- raw and packet sockets ---

	t.Run("raw socket", func(t *testing.T) {
		w.refused(t, w.a, "EPERM", "raw", "-addr", ap(addrB, 0))
		w.refused(t, w.a, "EPERM", "raw", "-addr", ap(addrB6, 0))
		// The policy field allows them.
		if r := w.run(t, w.r, "raw", "-addr", ap(addrR, 0)); !r.OK {
			t.Fatalf("raw socket with allowRawSockets: %+v", r)
		}
	})
	t.Run("ICMP datagram socket", func(t *testing.T) {
		// Let every group open ping sockets in the namespace, so that
		// the refusal is portcullis' and not the sysctl's.
		w.ns.Exec(t, "sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647")
		w.refused(t, w.a, "EPERM", "ping", "-addr", ap(addrB, 0))
		w.refused(t, w.a, "EPERM", "ping", "-addr", ap(addrB6, 0))
		if r := w.run(t, w.r, "ping", "-addr", ap(addrR, 0)); !r.OK {
			t.Fatalf("ping socket with allowRawSockets: %+v", r)
		}
	})

	// --- connection paths that skip bind() ---

	tcpSink := func(t *testing.T, addr string) *testenv.Proc {
		return w.server(t, w.host, addr, "-addr", addr, "-name", "sink")
	}
	t.Run("TCP Fast Open", func(t *testing.T) {
		sink := tcpSink(t, "127.0.0.1:26030")
		w.connect(t, w.a, "-addr", "127.0.0.1:26030", "-fastopen")
		if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("the sink saw %s, want %s", got, addrA)
		}
	})
	t.Run("connect, connect(AF_UNSPEC), reconnect", func(t *testing.T) {
		sink := tcpSink(t, "127.0.0.1:26031")
		r := w.connect(t, w.a, "-addr", "127.0.0.1:26031", "-reconnect")
		for i := 0; i < 2; i++ {
			if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
				t.Fatalf("connection %d came from %s, want %s", i, got, addrA)
			}
		}
		if !strings.HasPrefix(r.Local, addrA+":") {
			t.Fatalf("after the reconnect the socket is bound to %s", r.Local)
		}
		usink := udpSink(t, "127.0.0.1:26031")
		w.connect(t, w.a, "-proto", "udp", "-addr", "127.0.0.1:26031", "-reconnect")
		if got := peer(t, usink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("the UDP datagram came from %s, want %s", got, addrA)
		}
	})
	t.Run("io_uring connect and bind", func(t *testing.T) {
		sink := tcpSink(t, "127.0.0.1:26032")
		w.connect(t, w.a, "-addr", "127.0.0.1:26032", "-uring")
		if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("the io_uring connection came from %s, want %s", got, addrA)
		}
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26033), "-uring")
		w.server(t, w.a, ap(addrA, 26033), "-addr", "0.0.0.0:26033", "-uring")
	})
	t.Run("nested child cgroup", func(t *testing.T) {
		child := testenv.ChildCgroup(t, w.a, "child")
		w.refused(t, child, "EPERM", "listen", "-addr", ap(addrB, 26034))
		w.server(t, child, ap(addrA, 26034), "-addr", "0.0.0.0:26034")
		grandchild := testenv.ChildCgroup(t, child, "grandchild")
		w.refused(t, grandchild, "EPERM", "raw", "-addr", ap(addrA, 0))
	})
	t.Run("unshare -n inside the container", func(t *testing.T) {
		testenv.RequireCommand(t, "unshare", "util-linux")
		w.server(t, w.b, ap(addrB, 26035), "-addr", ap(addrB, 26035), "-name", "B")
		// In a namespace of its own the container can bind anything it
		// likes: nobody outside can reach it.
		out := w.sh(t, w.a, `unshare -n sh -c 'ip link set lo up; $PROBE listen -addr `+ap(addrB, 26035)+` & sleep 1; kill $!'`)
		if r := testenv.ParseProbe(t, out); !r.OK || r.Local != ap(addrB, 26035) {
			t.Fatalf("bind in a private namespace: %s, want listening on %s there", out, ap(addrB, 26035))
		}
		if got := w.who(t, ap(addrB, 26035), 5); got["B"] != 5 {
			t.Fatalf("connections to B answered by %v", got)
		}
	})
	t.Run("fork/exec and threads", func(t *testing.T) {
		out := w.sh(t, w.a, `$PROBE listen -addr `+ap(addrB, 26036)+`; (sh -c '$PROBE listen -addr `+ap(addrB, 26036)+`')`)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if r := testenv.ParseProbe(t, line); r.OK || r.Errno != "EPERM" {
				t.Fatalf("bind from a forked child: %+v, want EPERM", r)
			}
		}
		sink := tcpSink(t, "127.0.0.1:26036")
		w.connect(t, w.a, "-addr", "127.0.0.1:26036", "-thread")
		if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("connect from a new thread came from %s, want %s", got, addrA)
		}
	})
	t.Run("port 0", func(t *testing.T) {
		// Pinned like any wildcard bind, on a port nobody else has.
		_, got := w.serve(t, w.a, "", "-addr", "0.0.0.0:0")
		if !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("bind 0.0.0.0:0 gave %s, want %s:N", got, addrA)
		}
		// On shared loopback with SO_REUSEPORT: a fresh port, and the
		// host cannot join it afterwards.
		_, shared := w.serve(t, w.a, "", "-addr", "127.0.0.1:0", "-reuseport", "-name", "A")
		if r := w.run(t, w.host, "listen", "-addr", shared, "-reuseport"); r.OK || r.Errno != "EADDRINUSE" {
			t.Fatalf("host joining the container's port-0 listener %s: %+v, want EADDRINUSE", shared, r)
		}
	})
	t.Run("autobind on listen", func(t *testing.T) {
		// listen() without bind() runs no bind hook: the kernel picks an
		// ephemeral port on the wildcard address. It collides with and
		// intercepts nothing (the port was free, nobody asked for it).
		srv, got := w.serve(t, w.a, "", "-addr", "0.0.0.0:0", "-nobind", "-name", "A")
		port := netip.MustParseAddrPort(got).Port()
		if !strings.HasPrefix(got, "0.0.0.0:") || port < 32768 {
			t.Fatalf("listen without bind: %s, want 0.0.0.0 and an ephemeral port", got)
		}
		if l := w.listeners(t, "tcp", port); l != got {
			t.Fatalf("listeners on %d: %q, want only the container's %s", port, l, got)
		}
		srv.Kill()
	})
	t.Run("autobind on connect", func(t *testing.T) {
		sink := tcpSink(t, "127.0.0.1:26040")
		r := w.connect(t, w.a, "-addr", "127.0.0.1:26040")
		if got := peer(t, sink); !strings.HasPrefix(got, addrA+":") || got != r.Local {
			t.Fatalf("the sink saw %s (client says %s), want %s", got, r.Local, addrA)
		}
		usink := udpSink(t, "127.0.0.1:26040")
		w.connect(t, w.a, "-proto", "udp", "-addr", "127.0.0.1:26040", "-sendto")
		if got := peer(t, usink); !strings.HasPrefix(got, addrA+":") {
			t.Fatalf("the UDP sink saw %s, want %s", got, addrA)
		}
	})
	t.Run("bind a mapped hostPort directly", func(t *testing.T) {
		// A's own hostPort: allowed, on A's address (getsockname shows
		// the container port, as for a bind of the container port).
		w.server(t, w.a, ap(addrA, 80), "-addr", "0.0.0.0:"+mappedTo, "-name", "A")
		// B cannot take it on A's address, and its own bind of that port
		// lands on its own address, beside A's.
		w.refused(t, w.b, "EPERM", "listen", "-addr", ap(addrA, 26180))
		w.server(t, w.b, ap(addrB, 26180), "-addr", "0.0.0.0:"+mappedTo, "-name", "B")
		if l := w.listeners(t, "tcp", 26180); l != ap(addrA, 26180)+" "+ap(addrB, 26180) && l != ap(addrB, 26180)+" "+ap(addrA, 26180) {
			t.Fatalf("listeners on %s: %q", mappedTo, l)
		}
		if got := w.who(t, ap(addrA, 26180), 3); got["A"] != 3 {
			t.Fatalf("A's host port answered by %v", got)
		}
	})
	t.Run("v6-only :: in an IPv4-only container", func(t *testing.T) {
		// Parked on an ephemeral port of ::1: it starts, takes no port
		// anyone asked for, and two such containers do not collide.
		_, got := w.serve(t, w.c, "", "-addr", "[::]:26050", "-v6only")
		if !strings.HasPrefix(got, "[::1]:") || strings.HasSuffix(got, ":26050") {
			t.Fatalf("v6-only [::]:26050 in an IPv4-only container: %s, want [::1]:N", got)
		}
		w.server(t, w.c, ap(addrC, 26050), "-addr", "0.0.0.0:26050")
		if l := w.listeners(t, "tcp", 26050); l != ap(addrC, 26050) {
			t.Fatalf("listeners on 26050: %q, want only %s", l, ap(addrC, 26050))
		}
		// A dual-stack socket binding :: is pinned to the v4-mapped
		// address, as before.
		w.server(t, w.c, ap("::ffff:"+addrC, 26051), "-addr", "[::]:26051")
		// A dual-stack container's v6-only :: is its IPv6 address.
		w.server(t, w.a, ap(addrA6, 26052), "-addr", "[::]:26052", "-v6only")
	})
	t.Run("detach releases the addresses", func(t *testing.T) {
		// Last: B goes away, and its address is a plain loopback address
		// again (and can be attached to someone else).
		testenv.Detach(t, w.dir, "bypass-b")
		w.server(t, w.a, ap(addrB, 26060), "-addr", ap(addrB, 26060))
		cg := testenv.Cgroup(t, "bypass-b-again")
		testenv.Attach(t, w.dir, "bypass-b-again", cg.Path, `{"addresses": ["`+addrB+`"]}`, w.ns.Path)
		w.refused(t, w.a, "EPERM", "listen", "-addr", ap(addrB, 26061))
	})
}
