// Command sockprobe is the static (CGO_ENABLED=0, no libc) client and
// server the tests run inside containers' cgroups. It makes its sockets with
// raw syscalls so the test controls family, dual-stack and v4-mapped
// addresses exactly, and reports every result as one JSON line on stdout.
//
//	sockprobe listen  -proto tcp|udp -addr ADDR:PORT [-name NAME] [-origdst]
//	sockprobe connect -proto tcp|udp -addr ADDR:PORT [-send MSG] [-hold] [-sendto] [-mark N] [-tos N]
//	sockprobe raw|ping|packet -addr ADDR:PORT   (socket creation only)
//
// Socket options and call variants an attacker would try (options.go):
// -reuseport, -reuseport-after, -v6only, -freebind, -transparent, -nobind,
// -bind, -pktinfo, -sendmmsg, -fastopen, -reconnect, -uring, -thread.
//
// listen binds (and listens, for TCP), prints {"ok":true,"local":...} and
// serves until killed: a TCP peer gets "NAME\n", a UDP datagram is answered
// with "NAME" (with -origdst, from the address and port the datagram was
// sent to, which it reports as local: what a UDP server receiving
// dispatched traffic does). connect prints local and peer addresses (getsockname,
// getpeername) and what the peer sent; -hold then keeps the socket open and
// prints the error that ends it. -sendto (UDP) sends one datagram on an
// unconnected socket with sendto(2) and reports the reply's source.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

type result struct {
	OK    bool   `json:"ok"`
	Event string `json:"event,omitempty"`
	Local string `json:"local,omitempty"`
	Peer  string `json:"peer,omitempty"`
	// PeerName is getpeername's answer on a connected UDP socket, whose
	// Peer is the source of the reply.
	PeerName string `json:"peername,omitempty"`
	Reply    string `json:"reply,omitempty"`
	// Mark is a connected client's SO_MARK (what its container's policy
	// gave the socket at creation), when not 0.
	Mark  uint32 `json:"mark,omitempty"`
	Errno string `json:"errno,omitempty"`
	Error string `json:"error,omitempty"`
}

func emit(r result) {
	data, _ := json.Marshal(r)
	os.Stdout.Write(append(data, '\n'))
}

func fail(event string, err error) {
	r := result{Event: event, Error: err.Error()}
	var errno unix.Errno
	if errors.As(err, &errno) {
		r.Errno = unix.ErrnoName(errno)
	}
	emit(r)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sockprobe listen|connect -proto tcp|udp -addr ADDR:PORT")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	proto := fs.String("proto", "tcp", "tcp or udp")
	addr := fs.String("addr", "", "address:port to bind or connect to")
	name := fs.String("name", "server", "what a server answers")
	send := fs.String("send", "hello", "what a UDP client sends")
	hold := fs.Bool("hold", false, "keep the connection open and report how it ends")
	sendto := fs.Bool("sendto", false, "UDP: use sendto on an unconnected socket")
	fs.IntVar(&markOpt, "mark", -1, "after connect: setsockopt(SO_MARK, N)")
	fs.IntVar(&tosOpt, "tos", -1, "after connect: setsockopt(IP_TOS, N), IPV6_TCLASS on an IPv6 socket")
	origdst := fs.Bool("origdst", false, "UDP server: report each datagram's destination and reply from it")
	opts.register(fs)
	fs.Parse(os.Args[2:])
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil {
		fail("parse", err)
	}
	switch os.Args[1] {
	case "raw", "ping", "packet":
		special(os.Args[1], ap)
		return
	}
	fd := socket(ap, *proto)
	switch os.Args[1] {
	case "listen":
		if *proto == "udp" && *origdst {
			serveOrigDst(fd, ap, *name)
		}
		serve(fd, ap, *proto, *name)
	case "connect":
		if opts.bind != "" {
			bindFirst(fd)
		}
		switch {
		case opts.pktinfo != "" || opts.sendmmsg:
			datagramFrom(fd, ap, *send)
		case *sendto:
			datagram(fd, ap, *send)
		case opts.fastopen:
			fastOpen(fd, ap, *send)
		}
		dial(fd, ap, *proto, *send, *hold)
	default:
		fail("usage", fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

// socket makes an AF_INET socket for an IPv4 address and a dual-stack
// AF_INET6 socket for anything written as IPv6 (v4-mapped included).
func socket(ap netip.AddrPort, proto string) int {
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("socket", err)
	}
	if family == unix.AF_INET6 {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(opts.v6only))
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	opts.apply(fd, family)
	return fd
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func format(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return ""
}

func local(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "error: " + err.Error()
	}
	return format(sa)
}

func serve(fd int, ap netip.AddrPort, proto, name string) {
	if !opts.nobind {
		if err := opts.bindSocket(fd, sockaddr(ap)); err != nil {
			fail("bind", err)
		}
	}
	if opts.reuseportAfter {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			fail("setsockopt", err)
		}
	}
	if proto == "tcp" && opts.uring {
		if err := uringListen(fd, 128); err != nil {
			fail("listen", err)
		}
	} else if proto == "tcp" {
		if err := unix.Listen(fd, 128); err != nil {
			fail("listen", err)
		}
	}
	emit(result{OK: true, Event: "listening", Local: local(fd)})
	if proto == "udp" {
		buf := make([]byte, 2048)
		for {
			n, from, err := recvfrom(fd, buf, 0)
			if err != nil {
				fail("recvfrom", err)
			}
			emit(result{OK: true, Event: "datagram", Peer: format(from), Reply: string(buf[:n])})
			unix.Sendto(fd, []byte(name), 0, from)
		}
	}
	for {
		conn, from, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			fail("accept", err)
		}
		emit(result{OK: true, Event: "accept", Peer: format(from), Local: local(conn)})
		// Hold the connection open so clients can keep it; the kernel
		// frees it when the server exits.
		go func(c int) {
			unix.Write(c, []byte(name+"\n"))
			buf := make([]byte, 64)
			for {
				if n, err := read(c, buf); n <= 0 || err != nil {
					unix.Close(c)
					return
				}
			}
		}(conn)
	}
}

// serveOrigDst is the UDP server for dispatched datagrams: each may have
// been sent to any address and port, which IP_RECVORIGDSTADDR tells; the
// reply leaves from a socket bound there, so even a connected client (one
// that accepts replies from the address it dialled only) gets it.
func serveOrigDst(fd int, ap netip.AddrPort, name string) {
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		fail("bind", err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, 1)
	if ap.Addr().Is6() {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
	}
	emit(result{OK: true, Event: "listening", Local: local(fd)})
	buf, oob := make([]byte, 2048), make([]byte, 256)
	for {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
		if err == unix.EINTR {
			continue
		} else if err != nil {
			fail("recvmsg", err)
		}
		dst := origDst(oob[:oobn])
		emit(result{OK: true, Event: "datagram", Peer: format(from), Local: dst.String(), Reply: string(buf[:n])})
		if !dst.IsValid() {
			unix.Sendto(fd, []byte(name), 0, from)
			continue
		}
		reply := socket(dst, "udp")
		if err := unix.Bind(reply, sockaddr(dst)); err != nil {
			fail("bind reply socket", err)
		}
		unix.Sendto(reply, []byte(name), 0, from)
		unix.Close(reply)
	}
}

// origDst reads the IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message.
func origDst(oob []byte) netip.AddrPort {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port)
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap(), port)
		}
	}
	return netip.AddrPort{}
}

// datagram sends one datagram with sendto(2) on an unconnected socket and
// reports who answered.
func datagram(fd int, ap netip.AddrPort, send string) {
	if err := unix.Sendto(fd, []byte(send), 0, sockaddr(ap)); err != nil {
		fail("sendto", err)
	}
	reply(fd)
}

// markOpt and tosOpt, when not -1, are set on a client's socket after it
// connected: what a container would do to change its marks.
var markOpt, tosOpt int

func dial(fd int, ap netip.AddrPort, proto, send string, hold bool) {
	if err := opts.connect(fd, sockaddr(ap)); err != nil {
		fail("connect", err)
	}
	if opts.reconnect {
		// Dissolve the association (connect(AF_UNSPEC)) and connect again:
		// the second connect must leave from the pinned source too.
		if err := disconnect(fd); err != nil && proto == "udp" {
			fail("disconnect", err)
		}
		for {
			err := unix.Connect(fd, sockaddr(ap))
			if err == nil || (err != unix.EALREADY && err != unix.EINPROGRESS) {
				if err != nil {
					fail("reconnect", err)
				}
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if markOpt != -1 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, markOpt); err != nil {
			fail("setsockopt", err)
		}
	}
	if tosOpt != -1 {
		level, opt := unix.IPPROTO_IP, unix.IP_TOS
		if ap.Addr().Is6() {
			level, opt = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
		}
		if err := unix.SetsockoptInt(fd, level, opt, tosOpt); err != nil {
			fail("setsockopt", err)
		}
	}
	r := result{OK: true, Event: "connected", Local: local(fd)}
	if mark, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); err == nil {
		r.Mark = uint32(mark)
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		r.Peer = format(sa)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 2048)
	if proto == "udp" {
		if _, err := unix.Write(fd, []byte(send)); err != nil {
			fail("send", err)
		}
		n, from, err := recvfrom(fd, buf, 0)
		if err != nil {
			fail("recv", err)
		}
		r.Reply = string(buf[:n])
		r.PeerName = r.Peer
		if from != nil {
			r.Peer = format(from)
		}
	} else {
		n, err := read(fd, buf)
		if err != nil {
			fail("read", err)
		}
		r.Reply = strings.TrimSpace(string(buf[:n]))
	}
	emit(r)
	if !hold {
		return
	}
	// Report how the connection ends: for TCP a read error or EOF, for
	// connected UDP the error of the next send or receive.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	for {
		var err error
		var n int
		if proto == "udp" {
			if _, err = unix.Write(fd, []byte(send)); err == nil {
				n, _, err = recvfrom(fd, buf, 0)
				if errors.Is(err, unix.EAGAIN) {
					err = nil
				}
			}
		} else {
			n, err = read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if err == nil && n == 0 {
				emit(result{Event: "closed", Error: "EOF"})
				os.Exit(1)
			}
		}
		if err != nil {
			fail("hold", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recvfrom and read retry when a signal interrupts them. Go's runtime
// preempts goroutines with SIGURG, and a socket call with SO_RCVTIMEO set is
// not restarted after a signal (signal(7)), so without the retry a probe
// would report EINTR as if its socket had been killed.
func recvfrom(fd int, buf []byte, flags int) (int, unix.Sockaddr, error) {
	for {
		n, from, err := unix.Recvfrom(fd, buf, flags)
		if err != unix.EINTR {
			return n, from, err
		}
	}
}

func read(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if err != unix.EINTR {
			return n, err
		}
	}
}
