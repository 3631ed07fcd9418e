package state

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// sock_create runs for every socket a container creates, and the full
// program looks the policy up for each (about 90 ns here) only to find,
// for most policies, that it has nothing to apply: no mark, priority or
// DSCP. An attachment whose policy has none links sock_create_unmarked in
// sock_create's place instead (bpf/portcullis.c), which looks the policy
// up only for the raw and ICMP datagram sockets isolation checks. The link
// keeps the name sock_create, so everything that lists an attachment's
// links by the program table sees no difference; the variant is not in the
// table, so no cgroup gets both.
const (
	progSockCreate         = bpfobj.PortcullisProgSockCreate
	progSockCreateUnmarked = bpfobj.PortcullisProgSockCreateUnmarked
)

// marksSockets says whether policy p sets something on each socket at
// creation, which only the full sock_create does.
func marksSockets(p *policy.Policy) bool {
	return p.Mark != nil || p.Priority != nil || p.DSCP != nil
}

// programFor names the pinned program an attachment with policy p links
// for the program table's entry name.
func programFor(name string, p *policy.Policy) string {
	if name == progSockCreate && !marksSockets(p) {
		return progSockCreateUnmarked
	}
	return name
}

// relinkSockCreate points a cgroup attachment's sock_create link at the
// variant policy p needs, in place (BPF_LINK_UPDATE: every socket is
// created under one of the two). replacePolicy calls it when a policy
// change starts or stops marking: before writing a policy that marks
// sockets, after writing one that does not, so that no socket is ever
// created by the unmarked variant under a policy with a mark. An
// attachment keyed by network namespace has no links of its own.
func (s *State) relinkSockCreate(a *Attachment, p *policy.Policy) error {
	if a.KeyedByNetNS() {
		return nil
	}
	l, err := link.LoadPinnedLink(filepath.Join(s.linkDir(a.ID), progSockCreate), nil)
	if err != nil {
		return fmt.Errorf("attachment %s: open link %s: %w", a.ID, progSockCreate, err)
	}
	defer l.Close()
	prog, err := s.loadProgram(programFor(progSockCreate, p))
	if err != nil {
		return err
	}
	defer prog.Close()
	if err := l.Update(prog); err != nil {
		return fmt.Errorf("attachment %s: update link %s: %w", a.ID, progSockCreate, err)
	}
	return nil
}
