package terminate_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/terminate"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// One backend has 10,000 clients in an attached container, among 100,000
// TCP sockets in the host namespace. Terminating the backend destroys
// every one of the 10,000 (each sees ECONNABORTED on its next read) and
// touches none of the other 90,000, including the ones most like them: the
// same container's connections to another port of the backend's address,
// and host processes' connections to the backend itself. The iterator
// walks every socket: none is skipped between its batches.
//
// The backend runs in the test's namespace behind the veth, so its 11,000
// accepted sockets are not among the host's 100,000; it sees the clients'
// resets arrive.
func TestTenThousandClientsAmongHundredThousandSockets(t *testing.T) {
	const (
		clients    = 10_000
		perProcess = 5_000 // under RLIMIT_NOFILE (20,000)
		neighbours = 1_000
		total      = 100_000
	)
	w := newWorld(t)
	inNS := w.a.As4()
	inNS[3] = 100 // the namespace's end of the veth (newWorld)
	backend := netip.AddrPortFrom(netip.AddrFrom4(inNS), w.port)
	otherPort := netip.AddrPortFrom(backend.Addr(), w.port+1)
	serve := testenv.StartHolder(t, "backend", cgroup.Cgroup{}, w.ns, "serve", "-addr", backend.String())
	serveOther := testenv.StartHolder(t, "backend-other-port", cgroup.Cgroup{}, w.ns, "serve", "-addr", otherPort.String())

	ctr := testenv.Cgroup(t, "term-10k")
	w.attach(t, "term-10k", ctr, `{}`, "")
	var targets []*testenv.Holder
	for i := 0; i < clients/perProcess; i++ {
		targets = append(targets, testenv.StartHolder(t, fmt.Sprintf("clients-%d", i), ctr, nil, "dial", "-addr", backend.String(), "-n", fmt.Sprint(perProcess)))
	}
	sameContainerOtherPort := testenv.StartHolder(t, "same container, other port", ctr, nil, "dial", "-addr", otherPort.String(), "-n", fmt.Sprint(neighbours))
	hostToBackend := testenv.StartHolder(t, "host process, same backend", cgroup.Cgroup{}, nil, "dial", "-addr", backend.String(), "-n", fmt.Sprint(neighbours))
	pairs, held := testenv.HoldPairs(t, total-clients-2*neighbours)
	t.Logf("holding %d client sockets, %d neighbours, %d loopback sockets", clients, 2*neighbours, held)

	report, err := terminate.Backend(w.dir, backend, "tcp", false)
	if err != nil {
		t.Fatal(err)
	}
	if report.Matched != clients || report.Destroyed != clients {
		t.Errorf("matched %d, destroyed %d sockets, want %d each", report.Matched, report.Destroyed, clients)
	}
	for _, n := range report.Namespaces {
		for _, s := range n.Sockets {
			if s.Error != "" {
				t.Errorf("%s: %+v", n.NetNS, s)
			}
		}
		t.Logf("%s: scanned %d sockets, destroyed %d, in %v", n.NetNS, n.Scanned, n.Destroyed, n.ScanTime)
		if n.NetNS == terminate.HostNetNS && n.Scanned < total {
			t.Errorf("the iterator walked %d sockets in the host namespace, which holds at least %d", n.Scanned, total)
		}
	}

	for _, h := range targets {
		if c := h.Check(t); c.Aborted != c.Held {
			t.Errorf("%s: %+v, want every socket aborted", h.Name, c)
		}
	}
	testenv.CheckUntouched(t, append(pairs, sameContainerOtherPort, hostToBackend, serveOther)...)

	// The backend's ends of the destroyed connections got their resets
	// (over the veth, so on this host); the host processes' stay.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c := serve.Check(t)
		if c.Reset == clients && c.Alive == neighbours {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend: %+v, want %d reset by the destroyed clients and %d alive", c, clients, neighbours)
		}
	}
}
