package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/portcullis-net/portcullis/pkg/stats"
)

// stats is `portcullisctl stats -o json`, by attachment id.
func (c *chain) stats() map[string]stats.Attachment {
	c.t.Helper()
	out, err := exec.Command(c.ctl, "stats", "--state-dir", c.stateDir, "-o", "json").CombinedOutput()
	if err != nil {
		c.t.Fatalf("portcullisctl stats: %v\n%s", err, out)
	}
	var list []stats.Attachment
	if err := json.Unmarshal(out, &list); err != nil {
		c.t.Fatalf("portcullisctl stats -o json: %v\n%s", err, out)
	}
	m := map[string]stats.Attachment{}
	for _, a := range list {
		m[a.ID] = a
	}
	return m
}

// cell returns one traffic cell of a.
func cell(a stats.Attachment, direction, family, protocol string) stats.Counter {
	for _, c := range a.Traffic {
		if c.Direction == direction && c.Family == family && c.Protocol == protocol {
			return c
		}
	}
	return stats.Counter{}
}

// in runs fn on a thread inside the namespace at path: the sockets it
// makes live there.
func in(t *testing.T, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// A pod attached through the CNI plugin (its own network namespace, a veth
// to the bridge; keyed by its namespace, so its socket hooks, and the
// cgroup_skb programs that count its sockets' packets, are on the cgroup v2
// root) has traffic counters like a cgroup-attached container:
// it sends N bytes to and receives M bytes from a server in the bridge's
// namespace over TCP, and stats show tx >= N and rx >= M within headers;
// one UDP datagram each way counts exactly its IP length; loopback
// traffic inside the pod counts as sent and received; a second pod's
// counters stay at zero; DEL removes the pod's counters.
func TestPodTrafficCounters(t *testing.T) {
	const n, m = 3 << 20, 1 << 20
	c := newChain(t, "")
	pod, other := c.container(false), c.container(false)
	podIP := c.mustAdd(pod)
	c.mustAdd(other)
	podID, otherID := pod.attachmentID(), other.attachmentID()

	// The namespace copy's cgroup_skb programs are on the cgroup root
	// with the other namespace programs.
	for _, want := range []string{"account_ingress", "account_egress"} {
		if !slices.Contains(c.netnsLinks(), want) {
			t.Fatalf("namespace links %v: no %s", c.netnsLinks(), want)
		}
	}
	before := c.stats()
	for _, id := range []string{podID, otherID} {
		if _, ok := before[id]; !ok {
			t.Fatalf("no stats for %s: %+v", id, before)
		}
	}

	// The server, in the bridge's namespace at the gateway address.
	var ln net.Listener
	var udp net.PacketConn
	in(t, c.host.Path, func() (err error) {
		if ln, err = net.Listen("tcp", "10.99.0.1:0"); err != nil {
			return err
		}
		udp, err = net.ListenPacket("udp", "10.99.0.1:0")
		return err
	})
	defer ln.Close()
	defer udp.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		if _, err := io.CopyN(io.Discard, conn, n); err != nil {
			served <- err
			return
		}
		_, err = conn.Write(bytes.Repeat([]byte{'m'}, m))
		served <- err
	}()
	go func() {
		buf := make([]byte, 2048)
		k, from, err := udp.ReadFrom(buf)
		if err == nil && k == 100 {
			udp.WriteTo(buf[:50], from)
		}
	}()

	in(t, pod.ns.Path, func() error {
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := conn.Write(bytes.Repeat([]byte{'n'}, n)); err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, conn, m); err != nil {
			return err
		}
		if err := <-served; err != nil {
			return err
		}

		u, err := net.Dial("udp", udp.LocalAddr().String())
		if err != nil {
			return err
		}
		defer u.Close()
		u.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := u.Write(make([]byte, 100)); err != nil {
			return err
		}
		if k, err := u.Read(make([]byte, 2048)); err != nil || k != 50 {
			t.Errorf("UDP reply: %d bytes, %v", k, err)
		}
		return nil
	})
	// Let the closing segments pass.
	time.Sleep(200 * time.Millisecond)

	after := c.stats()
	a := after[podID]
	tx, rx := cell(a, "egress", "ipv4", "tcp"), cell(a, "ingress", "ipv4", "tcp")
	t.Logf("pod %s (%s): tcp tx %d packets %d bytes, rx %d packets %d bytes", podID, podIP, tx.Packets, tx.Bytes, rx.Packets, rx.Bytes)
	// Every packet carries at most 20 bytes of IPv4 and 60 of TCP header.
	if tx.Bytes < n || tx.Bytes > n+80*tx.Packets {
		t.Errorf("tx %d bytes in %d packets, want %d plus headers", tx.Bytes, tx.Packets, n)
	}
	if rx.Bytes < m || rx.Bytes > m+80*rx.Packets {
		t.Errorf("rx %d bytes in %d packets, want %d plus headers", rx.Bytes, rx.Packets, m)
	}
	// One datagram each way: 20 bytes of IPv4, 8 of UDP.
	if got := cell(a, "egress", "ipv4", "udp"); got.Packets != 1 || got.Bytes != 128 {
		t.Errorf("UDP sent: %+v, want 1 packet of 128 bytes", got)
	}
	if got := cell(a, "ingress", "ipv4", "udp"); got.Packets != 1 || got.Bytes != 78 {
		t.Errorf("UDP received: %+v, want 1 packet of 78 bytes", got)
	}
	for _, got := range after[otherID].Traffic {
		if got.Packets != 0 || got.Bytes != 0 {
			t.Errorf("the other pod's %+v, want nothing", got)
		}
	}

	// Loopback inside the pod: sent and received.
	const l = 1 << 20
	in(t, pod.ns.Path, func() error {
		lo, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer lo.Close()
		// The reader reports when it has read everything, so the
		// counters are read after the last byte was received (a fixed
		// sleep was too short under load).
		read := make(chan int64, 1)
		go func() {
			conn, err := lo.Accept()
			if err != nil {
				read <- 0
				return
			}
			k, _ := io.Copy(io.Discard, conn)
			conn.Close()
			read <- k
		}()
		conn, err := net.Dial("tcp", lo.Addr().String())
		if err != nil {
			return err
		}
		_, err = conn.Write(make([]byte, l))
		conn.Close()
		if err != nil {
			return err
		}
		select {
		case k := <-read:
			if k != l {
				t.Errorf("loopback: the reader got %d bytes, want %d", k, l)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("loopback: the reader did not finish")
		}
		return nil
	})
	lo := c.stats()[podID]
	if d := cell(lo, "egress", "ipv4", "tcp").Bytes - tx.Bytes; d < l {
		t.Errorf("loopback: %d more bytes sent, want at least %d", d, l)
	}
	if d := cell(lo, "ingress", "ipv4", "tcp").Bytes - rx.Bytes; d < l {
		t.Errorf("loopback: %d more bytes received, want at least %d", d, l)
	}

	if err := c.del(pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, ok := c.stats()[podID]; ok {
		t.Errorf("stats of %s after DEL", podID)
	}
}
