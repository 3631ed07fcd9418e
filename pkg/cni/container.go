package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// OwnerPrefix starts the owner of every attachment the plugin makes; the
// network's name follows ("cni:mynet"), so that GC for one network never
// removes another network's attachments.
const OwnerPrefix = "cni:"

// Owner is the owner recorded for attachments made for network name.
func Owner(network string) string { return OwnerPrefix + network }

// maxID is the longest attachment id the state accepts.
const maxID = 127

var notIDChar = regexp.MustCompile(`[^A-Za-z0-9_:-]`)

// AttachmentID is the id of a container's attachment: CNI_CONTAINERID and
// CNI_IFNAME joined by "-", with every character bpffs or the state does not
// accept turned into "_". An id longer than the state allows is cut and
// given a hash of the full name, so it stays unique and stable between ADD,
// CHECK, DEL and GC.
func AttachmentID(containerID, ifName string) string {
	full := containerID + "-" + ifName
	id := notIDChar.ReplaceAllString(full, "_")
	if id[0] == '_' || id[0] == ':' || id[0] == '-' {
		id = "c" + id
	}
	if len(id) <= maxID {
		return id
	}
	sum := sha256.Sum256([]byte(full))
	suffix := "-" + hex.EncodeToString(sum[:8])
	return id[:maxID-len(suffix)] + suffix
}

// ContainerCgroup finds the container's cgroup v2 directory: the one the
// runtime names through the cgroupPath capability, or else the cgroup of a
// process in the container's network namespace.
func ContainerCgroup(cgroupPath, netnsPath string) (cgroup.Cgroup, error) {
	mount, err := cgroup.Mount()
	if err != nil {
		return cgroup.Cgroup{}, err
	}
	if cgroupPath != "" {
		cg, err := cgroup.Resolve(cgroupPath)
		if err != nil {
			return cgroup.Cgroup{}, fmt.Errorf("runtimeConfig.cgroupPath: %w", err)
		}
		if cg.Path == mount {
			return cgroup.Cgroup{}, fmt.Errorf("runtimeConfig.cgroupPath %q is the root cgroup: the policy would apply to the whole host", cgroupPath)
		}
		return cg, nil
	}
	return cgroupOfNetNS(netnsPath, mount)
}

// cgroupOfNetNS returns the cgroup of the lowest-numbered process in the
// network namespace that has a cgroup of its own: not the root cgroup and
// not the plugin's (the runtime's), either of which would put the policy
// on far more than the container. "/proc/PID/ns/net" is tried first.
func cgroupOfNetNS(netnsPath, mount string) (cgroup.Cgroup, error) {
	if netnsPath == "" {
		return cgroup.Cgroup{}, fmt.Errorf("CNI_NETNS is empty and the runtime passed no cgroupPath: cannot find the container's cgroup")
	}
	var target unix.Stat_t
	if err := unix.Stat(netnsPath, &target); err != nil {
		return cgroup.Cgroup{}, fmt.Errorf("CNI_NETNS %s: %w", netnsPath, err)
	}
	self, _ := cgroup.OfPID(os.Getpid())
	usable := func(pid int) (cgroup.Cgroup, bool) {
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil || st.Dev != target.Dev || st.Ino != target.Ino {
			return cgroup.Cgroup{}, false
		}
		cg, err := cgroup.OfPID(pid)
		if err != nil || cg.Path == mount || cg.ID == self.ID {
			return cgroup.Cgroup{}, false
		}
		return cg, true
	}
	if rest, ok := strings.CutPrefix(netnsPath, "/proc/"); ok {
		if pid, err := strconv.Atoi(strings.TrimSuffix(rest, "/ns/net")); err == nil {
			if cg, ok := usable(pid); ok {
				return cg, nil
			}
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return cgroup.Cgroup{}, err
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	for _, pid := range pids {
		if cg, ok := usable(pid); ok {
			return cg, nil
		}
	}
	return cgroup.Cgroup{}, fmt.Errorf("no process in network namespace %s is in a cgroup of its own (cgroup v2 at %s): "+
		"declare the cgroupPath capability so the runtime passes the container's cgroup, or start the container's process before ADD", netnsPath, filepath.Clean(mount))
}
