// Package stats reads the per-attachment counters the kernel programs keep
// in the pinned state: traffic (bpf/accounting.h: packets and bytes per
// direction, address family and protocol) and policy decisions
// (bpf/counters.h: refused and remapped binds, translated and refused
// connects, rewritten UDP sources, terminated sockets).
//
// The counters are per-CPU maps; Read sums the CPUs at the moment it is
// called, so every reader (portcullisctl stats, the Prometheus collector)
// sees the kernel's current values without any copying in between.
package stats

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Reason indexes struct decision_counts (the DECISION_* defines of
// bpf/counters.h); the values are the contract with the programs.
type Reason int

// The decision reasons, in the order of bpf/counters.h.
const (
	BindRefusedAddress Reason = iota
	BindRefusedPort
	BindRemapped
	ConnectTranslated
	ConnectRefusedNoBackend
	ConnectRefusedEgress // reserved for egress rules (issue 13)
	ConnectRefusedCap    // reserved for connection caps (issue 13)
	UDPSourceRewritten
	SocketTerminated // counted by the termination iterators (bpf/sockiter.h)
	numReasons
)

// reasonNames are the names stats and metrics show (the metric's reason
// label). Append only.
var reasonNames = [numReasons]string{
	"bind_refused_address",
	"bind_refused_port",
	"bind_remapped",
	"connect_translated",
	"connect_refused_no_backend",
	"connect_refused_egress",
	"connect_refused_cap",
	"udp_source_rewritten",
	"socket_terminated",
}

func (r Reason) String() string {
	if r < 0 || r >= numReasons {
		return fmt.Sprintf("reason_%d", int(r))
	}
	return reasonNames[r]
}

// Reasons lists every reason in index order.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// Labels of the traffic dimensions, indexed as in struct traffic_counts.
var (
	Directions = []string{"ingress", "egress"}
	Families   = []string{"ipv4", "ipv6"}
	Protocols  = []string{"tcp", "udp", "other"}
)

// Counter is one cell of an attachment's traffic.
type Counter struct {
	Direction string `json:"direction"`
	Family    string `json:"family"`
	Protocol  string `json:"protocol"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// Attachment is the counters of one attachment.
type Attachment struct {
	ID       string `json:"id"`
	Owner    string `json:"owner,omitempty"`
	Cgroup   string `json:"cgroup"`
	CgroupID uint64 `json:"cgroupId"`
	// Traffic has one entry per direction, family and protocol.
	Traffic []Counter `json:"traffic"`
	// Decisions has every reason, zero or not.
	Decisions map[string]uint64 `json:"decisions"`
}

// Total sums the traffic of one direction ("ingress" or "egress").
func (a Attachment) Total(direction string) (packets, bytes uint64) {
	for _, c := range a.Traffic {
		if c.Direction == direction {
			packets += c.Packets
			bytes += c.Bytes
		}
	}
	return packets, bytes
}

// Decision returns the count of one reason.
func (a Attachment) Decision(r Reason) uint64 { return a.Decisions[r.String()] }

// Maps are the open counter maps of one state.
type Maps struct {
	traffic, decisions, userDecisions *ebpf.Map
	userPath                          string
}

// Open opens the pinned counter maps of the state in dir.
func Open(dir string) (*Maps, error) {
	m := &Maps{userPath: mapPath(dir, bpfobj.PortcullisMapDecisionsUser)}
	for name, dst := range map[string]**ebpf.Map{
		bpfobj.PortcullisMapTraffic:       &m.traffic,
		bpfobj.PortcullisMapDecisions:     &m.decisions,
		bpfobj.PortcullisMapDecisionsUser: &m.userDecisions,
	} {
		mp, err := ebpf.LoadPinnedMap(mapPath(dir, name), nil)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w (state from another version? run portcullisctl unload --force && portcullisctl load)", name, err)
		}
		*dst = mp
	}
	return m, nil
}

func mapPath(dir, name string) string { return filepath.Join(dir, "maps", name) }

// Close releases the maps.
func (m *Maps) Close() {
	for _, mp := range []*ebpf.Map{m.traffic, m.decisions, m.userDecisions} {
		if mp != nil {
			mp.Close()
		}
	}
}

// Read returns the counters of every attachment of s, sorted by id.
func Read(s *state.State) ([]Attachment, error) {
	m, err := Open(s.Dir())
	if err != nil {
		return nil, err
	}
	defer m.Close()
	list, err := s.Attachments()
	if err != nil {
		return nil, err
	}
	out := make([]Attachment, 0, len(list))
	for i := range list {
		a, err := m.Of(&list[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *a)
	}
	return out, nil
}

// Of reads the counters of one attachment. An attachment made before
// accounting existed has no entries and reads as zero.
func (m *Maps) Of(a *state.Attachment) (*Attachment, error) {
	key := a.CounterKey()
	out := &Attachment{ID: a.ID, Owner: a.Owner, Cgroup: a.CgroupPath, CgroupID: a.CgroupID, Decisions: map[string]uint64{}}

	var traffic []bpfobj.PortcullisTrafficCounts
	if err := m.traffic.Lookup(&key, &traffic); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read traffic of %s: %w", a.ID, err)
	}
	for d, dir := range Directions {
		for f, fam := range Families {
			for p, proto := range Protocols {
				c := Counter{Direction: dir, Family: fam, Protocol: proto}
				for _, cpu := range traffic {
					c.Packets += cpu.C[d][f][p].Packets
					c.Bytes += cpu.C[d][f][p].Bytes
				}
				out.Traffic = append(out.Traffic, c)
			}
		}
	}

	var perCPU []bpfobj.PortcullisDecisionCounts
	if err := m.decisions.Lookup(&key, &perCPU); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read decisions of %s: %w", a.ID, err)
	}
	var user bpfobj.PortcullisDecisionCounts
	if err := m.userDecisions.Lookup(&key, &user); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read decisions of %s: %w", a.ID, err)
	}
	for _, r := range Reasons() {
		n := user.Count[r]
		for _, cpu := range perCPU {
			n += cpu.Count[r]
		}
		out.Decisions[r.String()] = n
	}
	return out, nil
}

// Add counts n decisions of reason r, taken in userspace, for the
// attachment whose counter key is key. Concurrent callers are serialised
// by a flock on the map's pin. A key without an entry (its attachment is
// gone) is skipped.
func (m *Maps) Add(key uint64, r Reason, n uint64) error {
	if r < 0 || r >= numReasons {
		return fmt.Errorf("unknown decision reason %d", r)
	}
	f, err := os.Open(m.userPath)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", m.userPath, err)
	}
	var v bpfobj.PortcullisDecisionCounts
	if err := m.userDecisions.Lookup(&key, &v); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	v.Count[r] += n
	// UpdateExist: never recreate the entry of an attachment detached
	// since the lookup.
	if err := m.userDecisions.Update(&key, &v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}
