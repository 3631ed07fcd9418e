package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// Socket is a registered socket.
type Socket struct {
	Label    string          `json:"label"`
	Protocol policy.Protocol `json:"protocol"`
	// Local is the address the socket is bound to; dispatched traffic
	// reaches it whatever the address.
	Local  string `json:"local"`
	Cookie uint64 `json:"cookie"`
	PID    int    `json:"pid"`
	FD     int    `json:"fd"`
}

// Register takes a process's listening TCP or bound UDP socket (fd; -1
// means its only such socket) with pidfd_getfd and makes it the socket of
// label for its protocol, replacing the one registered before. When a
// container owns the label, the process must be in that container.
func (d *Dispatcher) Register(label string, pid, fd int) (*Socket, error) {
	if err := policy.CheckDispatchLabel(label); err != nil {
		return nil, err
	}
	if err := d.checkProcess(label, pid); err != nil {
		return nil, err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	var sock *candidate
	if fd >= 0 {
		sock, err = d.take(pidfd, pid, fd)
	} else {
		sock, err = d.find(pidfd, pid, label)
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(sock.fd)
	id, err := d.destinationID(label, sock.proto, true)
	if err != nil {
		return nil, err
	}
	if err := d.maps.Sockets.Update(id, uint64(sock.fd), 0); err != nil {
		d.dropDestinationIfUnused(id)
		return nil, fmt.Errorf("fd %d of process %d (%s %s): the kernel refused it in the sockmap: %w", sock.target, pid, sock.proto, sock.local, err)
	}
	cookie, _ := unix.GetsockoptUint64(sock.fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	return &Socket{Label: label, Protocol: sock.proto, Local: sock.local, Cookie: cookie, PID: pid, FD: sock.target}, nil
}

// checkProcess refuses a process outside the container owning label.
func (d *Dispatcher) checkProcess(label string, pid int) error {
	owners, err := d.owners()
	if err != nil {
		return err
	}
	owner := owners[label]
	if owner == nil || owner.KeyedByNetNS() {
		// A pod's policy follows its network namespace, which the
		// socket is checked to be in (it is the dispatcher's).
		return nil
	}
	cg, err := cgroup.OfPID(pid)
	if err != nil {
		return err
	}
	if cg.Path != owner.CgroupPath && !strings.HasPrefix(cg.Path, owner.CgroupPath+"/") {
		return fmt.Errorf("label %s belongs to container %s (cgroup %s); process %d is in cgroup %s, not in it", label, owner.ID, owner.CgroupPath, pid, cg.Path)
	}
	return nil
}

// candidate is a socket taken from the process.
type candidate struct {
	fd     int // our copy
	target int // its number in the process
	proto  policy.Protocol
	local  string
}

// take copies fd out of the process and checks it can be dispatched to.
func (d *Dispatcher) take(pidfd, pid, fd int) (*candidate, error) {
	mine, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
	}
	c := &candidate{fd: mine, target: fd}
	if err := d.check(c); err != nil {
		unix.Close(mine)
		return nil, fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
	}
	return c, nil
}

// find takes the process's only socket that could serve label: listening
// TCP or bound UDP, in this namespace, of a protocol the label is bound for.
func (d *Dispatcher) find(pidfd, pid int, label string) (*candidate, error) {
	protos := map[policy.Protocol]bool{}
	for _, p := range []policy.Protocol{policy.TCP, policy.UDP} {
		if _, err := d.destinationID(label, p, false); err == nil {
			protos[p] = true
		}
	}
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	var found []*candidate
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n))
		if !strings.HasPrefix(target, "socket:") {
			continue
		}
		c, err := d.take(pidfd, pid, n)
		if err != nil {
			continue
		}
		if len(protos) > 0 && !protos[c.proto] {
			unix.Close(c.fd)
			continue
		}
		found = append(found, c)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("process %d has no listening TCP or bound UDP socket in network namespace %s to register", pid, d.NetNS())
	case 1:
		return found[0], nil
	}
	var names []string
	for _, c := range found {
		names = append(names, fmt.Sprintf("fd %d %s %s", c.target, c.proto, c.local))
		unix.Close(c.fd)
	}
	return nil, fmt.Errorf("process %d has %d sockets that could be registered (%s): choose one with --fd", pid, len(found), strings.Join(names, ", "))
}

// check fills in the candidate and says why it cannot be dispatched to.
func (d *Dispatcher) check(c *candidate) error {
	domain, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		return errors.New("not an IPv4 or IPv6 socket")
	}
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		return err
	}
	local := sockaddrString(sa)
	c.local = local.String()
	proto, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	switch proto {
	case unix.IPPROTO_TCP:
		c.proto = policy.TCP
		if on, _ := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); on != 1 {
			return fmt.Errorf("TCP socket %s is not listening", c.local)
		}
	case unix.IPPROTO_UDP:
		c.proto = policy.UDP
		if local.Port() == 0 {
			return errors.New("UDP socket is not bound")
		}
		if _, err := unix.Getpeername(c.fd); err == nil {
			return fmt.Errorf("UDP socket %s is connected", c.local)
		}
	case unix.IPPROTO_MPTCP:
		// Go 1.24+ listeners are MPTCP by default where the kernel has it.
		return fmt.Errorf("%s is an MPTCP socket; the sockmap takes plain TCP only (in Go: net.ListenConfig.SetMultipathTCP(false))", c.local)
	default:
		return fmt.Errorf("%s is neither TCP nor UDP (protocol %d)", c.local, proto)
	}
	nsfd, err := unix.IoctlRetInt(c.fd, unix.SIOCGSKNS)
	if err != nil {
		return fmt.Errorf("network namespace of the socket: %w", err)
	}
	var st unix.Stat_t
	err = unix.Fstat(nsfd, &st)
	unix.Close(nsfd)
	if err != nil {
		return err
	}
	if st.Ino != d.ino {
		return fmt.Errorf("%s socket %s is in another network namespace than %s (use --netns)", c.proto, c.local, d.NetNS())
	}
	return nil
}

func sockaddrString(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
