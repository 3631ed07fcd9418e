// Command upgradeprobe is the load the upgrade test runs inside containers'
// cgroups while portcullisctl upgrade swaps the programs: it repeats its
// checks until the file -stop exists, prints "ready" after the first round,
// and at the end one JSON line of counts.
//
//	upgradeprobe -stop FILE [-connect ADDR:PORT -reply WORD]... checks:
//	  -connect ADDR      a TCP connect that must succeed and read -reply
//	  -deny-connect ADDR a TCP connect the policy must refuse (EPERM)
//	  -bind ADDR         a TCP bind+listen that must succeed, at -bound-ip
//	  -deny-bind ADDR    a TCP bind the policy must refuse (EPERM)
//
// A failed connect or bind that should succeed counts as failed; a
// refused one that succeeds (or fails otherwise than EPERM: the policy did
// not act) counts as escaped.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

type counts struct {
	Rounds  int      `json:"rounds"`
	OK      int      `json:"ok"`
	Failed  int      `json:"failed"`
	Escaped int      `json:"escaped"`
	Errors  []string `json:"errors,omitempty"`
}

func (c *counts) note(what string, err error) {
	if len(c.Errors) < 10 {
		c.Errors = append(c.Errors, fmt.Sprintf("%s: %v", what, err))
	}
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var connect, denyConnect, bind, denyBind list
	stop := flag.String("stop", "", "stop once this file exists")
	reply := flag.String("reply", "", "what a -connect must read")
	boundIP := flag.String("bound-ip", "", "the address a -bind must end up on")
	flag.Var(&connect, "connect", "")
	flag.Var(&denyConnect, "deny-connect", "")
	flag.Var(&bind, "bind", "")
	flag.Var(&denyBind, "deny-bind", "")
	flag.Parse()
	var c counts
	for {
		for _, addr := range connect {
			if err := dial(addr, *reply); err != nil {
				c.Failed++
				c.note("connect "+addr, err)
			} else {
				c.OK++
			}
		}
		for _, addr := range denyConnect {
			if err := dial(addr, ""); !errors.Is(err, syscall.EPERM) {
				c.Escaped++
				c.note("refused connect "+addr, err)
			} else {
				c.OK++
			}
		}
		for _, addr := range bind {
			l, err := net.Listen("tcp4", addr)
			if err != nil {
				c.Failed++
				c.note("bind "+addr, err)
				continue
			}
			if got := l.Addr().(*net.TCPAddr).IP.String(); *boundIP != "" && got != *boundIP {
				c.Escaped++
				c.note("bind "+addr, fmt.Errorf("bound to %s, not %s", l.Addr(), *boundIP))
			} else {
				c.OK++
			}
			l.Close()
		}
		for _, addr := range denyBind {
			l, err := net.Listen("tcp4", addr)
			if err == nil {
				l.Close()
				c.Escaped++
				c.note("refused bind "+addr, errors.New("succeeded"))
			} else if !errors.Is(err, syscall.EPERM) {
				c.Escaped++
				c.note("refused bind "+addr, err)
			} else {
				c.OK++
			}
		}
		c.Rounds++
		if c.Rounds == 1 {
			fmt.Println("ready")
		}
		if _, err := os.Stat(*stop); err == nil {
			break
		}
	}
	data, _ := json.Marshal(c)
	fmt.Println(string(data))
}

func dial(addr, want string) error {
	conn, err := net.DialTimeout("tcp4", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if want == "" {
		return nil
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if strings.TrimSpace(line) != want {
		return fmt.Errorf("read %q, want %q", line, want)
	}
	return nil
}
