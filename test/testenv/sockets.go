package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// HoldCounts is a sockhold report: how many sockets it holds and what a
// non-blocking read on each showed (they add up to Held).
type HoldCounts struct {
	OK      bool   `json:"ok"`
	Held    int    `json:"held"`
	Alive   int    `json:"alive"`
	Aborted int    `json:"aborted"`
	Reset   int    `json:"reset"`
	EOF     int    `json:"eof"`
	Other   int    `json:"other"`
	Error   string `json:"error"`
}

// Holder is a test/sockhold process holding many TCP connections.
type Holder struct {
	Name  string
	Held  int
	proc  *Proc
	stdin io.WriteCloser
}

// StartHolder starts `sockhold args...` in cg (zero: where the test runs)
// inside ns (nil: the test's namespace) and waits until its sockets are
// made. Cleanup kills it; its sockets are reset, not left in TIME_WAIT.
func StartHolder(t testing.TB, name string, cg cgroup.Cgroup, ns *NetNS, args ...string) *Holder {
	t.Helper()
	cmd := ns.Command(append([]string{Binary(t, "./test/sockhold")}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &Holder{Name: name, proc: Start(t, cg, cmd), stdin: stdin}
	r := h.read(t, 3*time.Minute)
	h.Held = r.Held
	return h
}

// Check reports what became of the holder's sockets.
func (h *Holder) Check(t testing.TB) HoldCounts {
	t.Helper()
	if _, err := io.WriteString(h.stdin, "check\n"); err != nil {
		t.Fatalf("sockhold %s: %v; stderr: %s", h.Name, err, h.proc.Stderr())
	}
	return h.read(t, time.Minute)
}

// Kill stops the holder; its sockets are reset.
func (h *Holder) Kill() { h.proc.Kill() }

func (h *Holder) read(t testing.TB, timeout time.Duration) HoldCounts {
	t.Helper()
	line := h.proc.Line(t, timeout)
	var r HoldCounts
	if err := json.Unmarshal([]byte(line), &r); err != nil || !r.OK {
		t.Fatalf("sockhold %s printed %q (%v); stderr: %s", h.Name, line, err, h.proc.Stderr())
	}
	return r
}

// connectionsPerPairHolder keeps a pairs holder (both ends of each
// connection, plus its listener) under this host's RLIMIT_NOFILE of 20,000.
const connectionsPerPairHolder = 8_000

// HoldPairs makes the test's network namespace hold about sockets TCP
// sockets: loopback connections of host processes, both ends held, spread
// over as many sockhold processes as the descriptor limit needs. It
// returns the holders and how many sockets they hold (listeners included).
func HoldPairs(t testing.TB, sockets int) ([]*Holder, int) {
	t.Helper()
	var holders []*Holder
	total := 0
	for i := 0; total < sockets; i++ {
		conns := min(connectionsPerPairHolder, (sockets-total+1)/2)
		h := StartHolder(t, fmt.Sprintf("pairs-%d", i), cgroup.Cgroup{}, nil, "pairs", "-n", fmt.Sprint(conns))
		holders = append(holders, h)
		total += h.Held + 1
	}
	return holders, total
}

// CheckUntouched fails the test unless every socket of every holder is
// still alive.
func CheckUntouched(t testing.TB, holders ...*Holder) {
	t.Helper()
	var bad []string
	for _, h := range holders {
		if c := h.Check(t); c.Alive != c.Held {
			bad = append(bad, fmt.Sprintf("%s: %+v", h.Name, c))
		}
	}
	if len(bad) > 0 {
		t.Errorf("sockets that had to be left alone were touched:\n%s", strings.Join(bad, "\n"))
	}
}
