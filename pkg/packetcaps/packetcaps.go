// Package packetcaps enforces what portcullis can about packet sockets.
//
// A packet socket (AF_PACKET) passes no cgroup hook: cgroup/sock_create
// runs for IPv4 and IPv6 sockets only (Linux 6.18), and the BPF LSM hook
// that would see it cannot be loaded on locked-down kernels. In the host
// network namespace such a socket can send frames from any address,
// another container's included. It needs CAP_NET_RAW in the user
// namespace that owns the network namespace, so the front ends refuse, or
// warn about, containers that keep it (docs/security.md, "Packet
// sockets"):
//
//   - the OCI hook refuses at createRuntime a host-network container whose
//     policy has addresses and does not set allowRawSockets while its
//     config.json keeps CAP_NET_RAW in any capability set;
//   - portcullisctl attach warns about the processes already in the
//     cgroup whose bounding set keeps it.
//
// A container with a network namespace of its own is not affected: its
// packet sockets see only its own namespace.
package packetcaps

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// capNetRaw is CAP_NET_RAW's bit in /proc/PID/status's capability masks.
const capNetRaw = 13

// Fixes is what every refusal and warning names.
const Fixes = `drop CAP_NET_RAW (runc/podman --cap-drop NET_RAW, or leave it out of process.capabilities) or set "allowRawSockets": true in the policy`

// Applies says whether a policy is one that packet sockets could bypass: it
// pins addresses and does not allow raw sockets.
func Applies(p *policy.Policy) bool {
	return p != nil && len(p.Addresses) > 0 && !p.AllowRawSockets
}

// SpecSets names the capability sets of config.json's process that keep
// CAP_NET_RAW. A process without a capabilities object keeps what the
// runtime has (everything, for a root runtime): all of them.
func SpecSets(spec *specs.Spec) []string {
	if spec == nil || spec.Process == nil || spec.Process.Capabilities == nil {
		return []string{"all (config.json sets no capabilities)"}
	}
	c := spec.Process.Capabilities
	var sets []string
	for _, s := range []struct {
		name string
		caps []string
	}{{"bounding", c.Bounding}, {"effective", c.Effective}, {"permitted", c.Permitted}, {"inheritable", c.Inheritable}, {"ambient", c.Ambient}} {
		for _, name := range s.caps {
			if strings.EqualFold(name, "CAP_NET_RAW") {
				sets = append(sets, s.name)
				break
			}
		}
	}
	return sets
}

// newUserNS says whether the container gets a user namespace of its own:
// its capabilities then count in that namespace only, not in the host's
// network namespace, which the initial user namespace owns.
func newUserNS(spec *specs.Spec) bool {
	if spec == nil || spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.UserNamespace && ns.Path == "" {
			return true
		}
	}
	return false
}

// CheckSpec is the OCI hook's check at createRuntime, before anything is
// attached: an error when the container shares the host network namespace
// (hostNetNS), its policy Applies and config.json keeps CAP_NET_RAW.
func CheckSpec(p *policy.Policy, spec *specs.Spec, hostNetNS bool) error {
	if !hostNetNS || !Applies(p) || newUserNS(spec) {
		return nil
	}
	sets := SpecSets(spec)
	if len(sets) == 0 {
		return nil
	}
	return fmt.Errorf("it keeps CAP_NET_RAW (%s) in the host network namespace, where portcullis cannot refuse packet sockets: %s", strings.Join(sets, ", "), Fixes)
}

// RawCapable lists, sorted, the processes in cgroup dir (an absolute
// cgroup v2 path) and the cgroups below it that share this process's
// network namespace and whose bounding set (CapBnd) keeps CAP_NET_RAW.
// Processes that exit meanwhile are skipped.
func RawCapable(dir string) ([]int, error) {
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		return nil, fmt.Errorf("own network namespace: %w", err)
	}
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			return nil // a child cgroup removed meanwhile
		}
		if !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			var ns unix.Stat_t
			if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &ns) != nil || ns.Dev != own.Dev || ns.Ino != own.Ino {
				continue
			}
			if bnd, ok := capBnd(pid); ok && bnd&(1<<capNetRaw) != 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	sort.Ints(pids)
	return pids, err
}

// capBnd reads a process's bounding set from /proc/PID/status.
func capBnd(pid int) (uint64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return mask, err == nil
		}
	}
	return 0, false
}

// Warning is portcullisctl attach's one-line warning about pids, or "" when
// there are none.
func Warning(cgroupPath string, pids []int) string {
	if len(pids) == 0 {
		return ""
	}
	const show = 5
	list := make([]string, 0, show)
	for i, pid := range pids {
		if i == show {
			list = append(list, fmt.Sprintf("and %d more", len(pids)-show))
			break
		}
		list = append(list, strconv.Itoa(pid))
	}
	return fmt.Sprintf("warning: process %s of cgroup %s keeps CAP_NET_RAW in the host network namespace, where portcullis cannot refuse packet sockets (docs/security.md): %s",
		strings.Join(list, ", "), cgroupPath, Fixes)
}
