// Command connprobe holds many sockets at once for the connection-limit
// and egress tests. It reads one command a line on stdin and answers each
// with one JSON line on stdout:
//
//	connect tcp|udp ADDR:PORT   connect a new socket; {"ok":true,"id":N}
//	sendto ADDR:PORT            one datagram from a new unconnected UDP socket
//	reconnect N ADDR:PORT       connect socket N again (UDP: to a new peer)
//	close N                     close socket N
//	check N                     socket N's pending error (SO_ERROR), if any
//	send N                      write a few bytes on socket N
//	quit
//
// Failures carry the errno name ({"ok":false,"errno":"EAGAIN"}). It uses
// raw syscalls, like sockprobe, so no library retries or hides an errno.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

type reply struct {
	OK    bool   `json:"ok"`
	ID    int    `json:"id,omitempty"`
	Errno string `json:"errno,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	socks := map[int]int{}
	next := 1
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		var r reply
		var err error
		switch {
		case f[0] == "connect" && len(f) == 3:
			var fd int
			if fd, err = dial(f[1], f[2]); err == nil {
				socks[next] = fd
				r.ID = next
				next++
			}
		case f[0] == "reconnect" && len(f) == 3:
			n, _ := strconv.Atoi(f[1])
			var sa unix.Sockaddr
			if sa, _, err = sockaddr(f[2]); err == nil {
				err = unix.Connect(socks[n], sa)
			}
		case f[0] == "sendto" && len(f) == 2:
			err = sendto(f[1])
		case f[0] == "close" && len(f) == 2:
			n, _ := strconv.Atoi(f[1])
			fd, ok := socks[n]
			if !ok {
				err = errors.New("no such socket")
				break
			}
			err = unix.Close(fd)
			delete(socks, n)
		case f[0] == "check" && len(f) == 2:
			n, _ := strconv.Atoi(f[1])
			var errno int
			if errno, err = unix.GetsockoptInt(socks[n], unix.SOL_SOCKET, unix.SO_ERROR); err == nil && errno != 0 {
				err = unix.Errno(errno)
			}
		case f[0] == "send" && len(f) == 2:
			n, _ := strconv.Atoi(f[1])
			_, err = unix.Write(socks[n], []byte("ping"))
		case f[0] == "quit":
			return
		default:
			err = errors.New("unknown command")
		}
		r.OK = err == nil
		if err != nil {
			r.Error = err.Error()
			var errno unix.Errno
			if errors.As(err, &errno) {
				r.Errno = unix.ErrnoName(errno)
			}
		}
		out.Encode(r)
	}
}

func sockaddr(s string) (unix.Sockaddr, int, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, 0, err
	}
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, unix.AF_INET, nil
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}, unix.AF_INET6, nil
}

func dial(proto, addr string) (int, error) {
	sa, family, err := sockaddr(addr)
	if err != nil {
		return -1, err
	}
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func sendto(addr string) error {
	sa, family, err := sockaddr(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, []byte("hello"), 0, sa)
}
