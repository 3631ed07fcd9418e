// Command sockhold holds many TCP connections for the termination tests at
// scale, and reports what happened to them. A process may hold no more
// than RLIMIT_NOFILE descriptors (20,000 here, and it cannot be raised),
// so a test runs several.
//
//	sockhold pairs -n N            N connections to its own listener on 127.0.0.1, both ends held
//	sockhold dial -addr A:P -n N   N connections to A:P
//	sockhold serve -addr A:P       accepts on A:P and holds every connection
//
// When its sockets are ready it prints {"ok":true,"held":N}. Then each
// line "check" on stdin is answered with one JSON line counting the held
// sockets by what a non-blocking read on each returns now: "alive"
// (EAGAIN: nothing happened to it), "aborted" (ECONNABORTED: destroyed),
// "reset" (ECONNRESET), "eof" (the peer closed) or "other". A socket keeps
// the first outcome other than "alive" it showed (it is not read again),
// so the counts add up to "held". It exits when stdin closes.
//
// The sockets are raw descriptors (no Go net.Conn), so no finalizer ever
// closes them, and each has SO_LINGER 0: at exit they are reset rather
// than left in TIME_WAIT, where the next scan would count them.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

type counts struct {
	OK      bool   `json:"ok"`
	Held    int    `json:"held,omitempty"`
	Alive   int    `json:"alive"`
	Aborted int    `json:"aborted"`
	Reset   int    `json:"reset"`
	EOF     int    `json:"eof"`
	Other   int    `json:"other"`
	Error   string `json:"error,omitempty"`
}

func emit(c counts) {
	data, _ := json.Marshal(c)
	os.Stdout.Write(append(data, '\n'))
}

func fail(format string, args ...any) {
	emit(counts{Error: fmt.Sprintf(format, args...)})
	os.Exit(1)
}

// held is every socket this process holds, and what became of each.
var held struct {
	sync.Mutex
	fds     []int
	outcome []string // "" while alive
}

func hold(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := unix.SetNonblock(fd, true); err != nil {
		fail("set non-blocking: %v", err)
	}
	held.Lock()
	held.fds = append(held.fds, fd)
	held.outcome = append(held.outcome, "")
	held.Unlock()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sockhold pairs -n N | dial -addr A:P -n N | serve -addr A:P")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	n := fs.Int("n", 0, "connections to make")
	addr := fs.String("addr", "", "address:port to dial or serve")
	fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "pairs":
		ln := listen(netip.MustParseAddrPort("127.0.0.1:0"))
		accepted := make(chan struct{}, *n)
		go accept(ln, accepted)
		target := localAddr(ln)
		for i := 0; i < *n; i++ {
			hold(dial(target))
			<-accepted
		}
	case "dial":
		target, err := netip.ParseAddrPort(*addr)
		if err != nil {
			fail("-addr: %v", err)
		}
		for i := 0; i < *n; i++ {
			hold(dial(target))
		}
	case "serve":
		target, err := netip.ParseAddrPort(*addr)
		if err != nil {
			fail("-addr: %v", err)
		}
		go accept(listen(target), nil)
	default:
		fail("unknown command %q", os.Args[1])
	}
	held.Lock()
	emit(counts{OK: true, Held: len(held.fds)})
	held.Unlock()

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if lines.Text() == "check" {
			emit(check())
		}
	}
}

func sockaddr(ap netip.AddrPort) (int, unix.Sockaddr) {
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func listen(ap netip.AddrPort) int {
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("socket: %v", err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sa); err != nil {
		fail("bind %s: %v", ap, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		fail("listen %s: %v", ap, err)
	}
	return fd
}

func localAddr(fd int) netip.AddrPort {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		fail("getsockname: %v", err)
	}
	in4 := sa.(*unix.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
}

// accept holds every connection the listener gets, telling accepted.
func accept(ln int, accepted chan<- struct{}) {
	for {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			fail("accept: %v", err)
		}
		hold(fd)
		if accepted != nil {
			accepted <- struct{}{}
		}
	}
}

func dial(ap netip.AddrPort) int {
	family, sa := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail("socket: %v", err)
	}
	for {
		err = unix.Connect(fd, sa)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		fail("connect %s: %v", ap, err)
	}
	return fd
}

func check() counts {
	held.Lock()
	defer held.Unlock()
	c := counts{OK: true, Held: len(held.fds)}
	buf := make([]byte, 1)
	for i, fd := range held.fds {
		if held.outcome[i] == "" {
			k, err := unix.Read(fd, buf)
			switch {
			case errors.Is(err, unix.EAGAIN):
			case errors.Is(err, unix.ECONNABORTED):
				held.outcome[i] = "aborted"
			case errors.Is(err, unix.ECONNRESET):
				held.outcome[i] = "reset"
			case err == nil && k == 0:
				held.outcome[i] = "eof"
			default:
				held.outcome[i] = "other"
			}
		}
		switch held.outcome[i] {
		case "":
			c.Alive++
		case "aborted":
			c.Aborted++
		case "reset":
			c.Reset++
		case "eof":
			c.EOF++
		default:
			c.Other++
		}
	}
	return c
}
