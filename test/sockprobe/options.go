package main

import (
	"flag"
	"net/netip"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// options are the socket options and call variants of an attacker's
// repertoire; each is one flag.
type options struct {
	reuseport      bool   // SO_REUSEPORT before bind
	reuseportAfter bool   // SO_REUSEPORT after bind (before listen)
	v6only         bool   // IPV6_V6ONLY (default: dual-stack)
	freebind       bool   // IP_FREEBIND
	transparent    bool   // IP_TRANSPARENT
	nobind         bool   // listen without bind: the kernel autobinds
	bind           string // connect: bind this address first
	pktinfo        string // UDP: the source to ask for with IP_PKTINFO / IPV6_PKTINFO
	sendmmsg       bool   // UDP: send with sendmmsg(2)
	connected      bool   // UDP: connect first, then sendmsg with no address
	fastopen       bool   // TCP: sendto(MSG_FASTOPEN) instead of connect
	reconnect      bool   // connect, connect(AF_UNSPEC), connect again
	uring          bool   // bind/listen/connect through io_uring
	thread         bool   // connect from a thread of its own
}

var opts options

func (o *options) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.reuseport, "reuseport", false, "set SO_REUSEPORT before bind")
	fs.BoolVar(&o.reuseportAfter, "reuseport-after", false, "set SO_REUSEPORT after bind")
	fs.BoolVar(&o.v6only, "v6only", false, "set IPV6_V6ONLY")
	fs.BoolVar(&o.freebind, "freebind", false, "set IP_FREEBIND")
	fs.BoolVar(&o.transparent, "transparent", false, "set IP_TRANSPARENT")
	fs.BoolVar(&o.nobind, "nobind", false, "listen without bind")
	fs.StringVar(&o.bind, "bind", "", "connect: bind ADDR:PORT first")
	fs.StringVar(&o.pktinfo, "pktinfo", "", "UDP: source address for IP_PKTINFO/IPV6_PKTINFO")
	fs.BoolVar(&o.sendmmsg, "sendmmsg", false, "UDP: send with sendmmsg")
	fs.BoolVar(&o.connected, "connected", false, "UDP -pktinfo: connect first, then sendmsg without an address")
	fs.BoolVar(&o.fastopen, "fastopen", false, "TCP: connect with sendto(MSG_FASTOPEN)")
	fs.BoolVar(&o.reconnect, "reconnect", false, "connect, connect(AF_UNSPEC), connect again")
	fs.BoolVar(&o.uring, "uring", false, "bind/listen/connect through io_uring")
	fs.BoolVar(&o.thread, "thread", false, "connect from a new thread")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// apply sets the options that belong on a fresh socket.
func (o *options) apply(fd, family int) {
	set := func(level, opt int) {
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			fail("setsockopt", err)
		}
	}
	if o.reuseport {
		set(unix.SOL_SOCKET, unix.SO_REUSEPORT)
	}
	if o.freebind {
		set(unix.IPPROTO_IP, unix.IP_FREEBIND)
	}
	if o.transparent {
		if family == unix.AF_INET6 {
			set(unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT)
		} else {
			set(unix.IPPROTO_IP, unix.IP_TRANSPARENT)
		}
	}
}

func (o *options) bindSocket(fd int, sa unix.Sockaddr) error {
	if o.uring {
		return uringBind(fd, sa)
	}
	return unix.Bind(fd, sa)
}

// connect connects, from a thread of its own or through io_uring if asked.
func (o *options) connect(fd int, sa unix.Sockaddr) error {
	if o.uring {
		return uringConnect(fd, sa)
	}
	if !o.thread {
		return unix.Connect(fd, sa)
	}
	done := make(chan error)
	go func() {
		// A locked goroutine that exits takes its thread with it, so the
		// connect runs on a thread made for it.
		runtime.LockOSThread()
		done <- unix.Connect(fd, sa)
	}()
	return <-done
}

func bindFirst(fd int) {
	ap, err := netip.ParseAddrPort(opts.bind)
	if err != nil {
		fail("parse", err)
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		fail("bind", err)
	}
}

// disconnect is connect(2) with an AF_UNSPEC address.
func disconnect(fd int) error {
	sa := unix.RawSockaddrAny{}
	sa.Addr.Family = unix.AF_UNSPEC
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	if e != 0 {
		return e
	}
	return nil
}

// pktinfo is the control message that asks for a source address.
func pktinfo(src netip.Addr) []byte {
	if src.Is4() {
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
	}
	return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.As16()})
}

// datagramFrom sends on an unconnected UDP socket with sendmsg (or
// sendmmsg), with the -pktinfo source if given, and reports who answered.
func datagramFrom(fd int, ap netip.AddrPort, send string) {
	var oob []byte
	if opts.pktinfo != "" {
		src, err := netip.ParseAddr(opts.pktinfo)
		if err != nil {
			fail("parse", err)
		}
		oob = pktinfo(src)
	}
	var err error
	to := sockaddr(ap)
	if opts.connected {
		if err := unix.Connect(fd, to); err != nil {
			fail("connect", err)
		}
		to = nil
	}
	if opts.sendmmsg {
		err = sendmmsg(fd, []byte(send), oob, ap)
	} else {
		_, err = unix.SendmsgN(fd, []byte(send), oob, to, 0)
	}
	if err != nil {
		fail("sendmsg", err)
	}
	reply(fd)
}

// sendmmsg sends two copies of data in one sendmmsg(2) call.
func sendmmsg(fd int, data, oob []byte, ap netip.AddrPort) error {
	type mmsghdr struct {
		hdr unix.Msghdr
		len uint32
		_   [4]byte
	}
	name, namelen := rawSockaddr(ap)
	iov := unix.Iovec{Base: &data[0]}
	iov.SetLen(len(data))
	var msgs [2]mmsghdr
	for i := range msgs {
		h := &msgs[i].hdr
		h.Name = (*byte)(name)
		h.Namelen = namelen
		h.Iov = &iov
		h.SetIovlen(1)
		if len(oob) > 0 {
			h.Control = &oob[0]
			h.SetControllen(len(oob))
		}
	}
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), 2, 0, 0, 0)
	runtime.KeepAlive(data)
	if e != 0 {
		return e
	}
	if n != 2 {
		return unix.EIO
	}
	return nil
}

func rawSockaddr(ap netip.AddrPort) (unsafe.Pointer, uint32) {
	port := ap.Port()
	if ap.Addr().Is4() {
		sa := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
		sa.Port = port<<8 | port>>8
		return unsafe.Pointer(sa), unix.SizeofSockaddrInet4
	}
	sa := &unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	sa.Port = port<<8 | port>>8
	return unsafe.Pointer(sa), unix.SizeofSockaddrInet6
}

// reply waits for one datagram and reports its source.
func reply(fd int) {
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 2048)
	n, from, err := recvfrom(fd, buf, 0)
	if err != nil {
		fail("recvfrom", err)
	}
	emit(result{OK: true, Event: "reply", Local: local(fd), Peer: format(from), Reply: string(buf[:n])})
	os.Exit(0)
}

// fastOpen connects with data in the SYN (TCP Fast Open, sendto with
// MSG_FASTOPEN) and reports the connection like dial does.
func fastOpen(fd int, ap netip.AddrPort, send string) {
	if err := unix.Sendto(fd, []byte(send), unix.MSG_FASTOPEN, sockaddr(ap)); err != nil {
		fail("sendto", err)
	}
	r := result{OK: true, Event: "connected", Local: local(fd)}
	if sa, err := unix.Getpeername(fd); err == nil {
		r.Peer = format(sa)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	buf := make([]byte, 2048)
	n, err := read(fd, buf)
	if err != nil {
		fail("read", err)
	}
	r.Reply = string(buf[:n])
	emit(r)
	os.Exit(0)
}

// special makes a raw, ICMP datagram or packet socket and, for raw and
// ping, binds it to addr: these never pass the cgroup bind hook.
func special(kind string, ap netip.AddrPort) {
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	var fd int
	var err error
	switch kind {
	case "raw":
		fd, err = unix.Socket(family, unix.SOCK_RAW, unix.IPPROTO_UDP)
	case "ping":
		proto := unix.IPPROTO_ICMP
		if family == unix.AF_INET6 {
			proto = unix.IPPROTO_ICMPV6
		}
		fd, err = unix.Socket(family, unix.SOCK_DGRAM, proto)
	case "packet":
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ALL)))
	}
	if err != nil {
		fail("socket", err)
	}
	if kind != "packet" {
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(ap.Addr(), 0))); err != nil {
			fail("bind", err)
		}
		emit(result{OK: true, Event: "bound", Local: local(fd)})
		return
	}
	emit(result{OK: true, Event: "socket"})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
