package kernel

import (
	"strings"

	"golang.org/x/sys/unix"
)

// LoadCapabilities says which capabilities loading and attaching the
// programs needs, for messages.
const LoadCapabilities = "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"

// loadCaps are the capabilities loading and attaching the programs needs:
// CAP_BPF to load them, CAP_PERFMON because they read kernel structures
// through BTF pointers (the task's cgroup id on every policy lookup, the
// socket's fields on the packet path), CAP_NET_ADMIN to attach them to
// cgroups. CAP_SYS_ADMIN stands in for all three.
var loadCaps = []struct {
	bit  int
	name string
}{
	{unix.CAP_BPF, "CAP_BPF"},
	{unix.CAP_PERFMON, "CAP_PERFMON"},
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"},
}

// MissingCapabilities names the capabilities of loadCaps this process
// does not have in its effective set ("" when it has them all, or when it
// cannot tell). Without CAP_PERFMON the kernel's answer to a load is a
// verifier message about a helper, which says nothing about capabilities.
func MissingCapabilities() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return ""
	}
	has := func(bit int) bool { return data[bit/32].Effective&(1<<(uint(bit)%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) {
		return ""
	}
	var missing []string
	for _, c := range loadCaps {
		if !has(c.bit) {
			missing = append(missing, c.name)
		}
	}
	return strings.Join(missing, ", ")
}
