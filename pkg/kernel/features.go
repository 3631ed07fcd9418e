// Package kernel probes the kernel features portcullis uses, each by name,
// so that `portcullisctl doctor` and the CNI STATUS verb can say exactly
// what is missing instead of failing half-way through an attach.
package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/cgroup"
)

// Feature is the result of one probe.
type Feature struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Required bool   `json:"required"`
	Detail   string `json:"detail,omitempty"`
}

// Check runs every probe. bpffsDir is where the state would be pinned.
func Check(bpffsDir string) []Feature {
	var out []Feature
	add := func(name string, required bool, err error, okDetail string) {
		f := Feature{Name: name, Required: required, OK: err == nil, Detail: okDetail}
		if err != nil {
			f.Detail = err.Error()
		}
		out = append(out, f)
	}

	var capErr error
	if missing := MissingCapabilities(); missing != "" {
		capErr = fmt.Errorf("this process lacks %s; loading the programs needs %s (root has them)", missing, LoadCapabilities)
	}
	add("capabilities", true, capErr, LoadCapabilities)

	mount, err := cgroup.Mount()
	add("cgroup v2", true, err, mount)

	add("bpffs", true, checkBPFFS(bpffsDir), bpffsDir)

	_, err = btf.LoadKernelSpec()
	add("BTF (/sys/kernel/btf/vmlinux)", true, err, "")

	for _, pt := range []struct {
		t        ebpf.ProgramType
		required bool
		use      string
	}{
		{ebpf.CGroupSockAddr, true, "bind/connect/sendmsg/getsockname"},
		{ebpf.CGroupSock, true, "post_bind, sock_create/release"},
		{ebpf.CGroupSKB, true, "traffic accounting, packet marks"},
		{ebpf.SockOps, true, "priority of accepted TCP sockets"},
		{ebpf.SkLookup, false, "sk_lookup port sharing"},
	} {
		add("program type "+pt.t.String(), pt.required, features.HaveProgramType(pt.t), pt.use)
	}
	add("helper bpf_bind", true, features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnBind), "source address pinning")
	add("helper bpf_get_current_ancestor_cgroup_id", true,
		features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetCurrentAncestorCgroupId), "policies for nested cgroups")
	add("kfunc bpf_sock_destroy", false, haveKernelType[*btf.Func]("bpf_sock_destroy"), "socket termination (kernel 6.5+)")
	add("iterator tcp", false, haveKernelType[*btf.Struct]("bpf_iter__tcp"), "socket termination")
	add("iterator udp", false, haveKernelType[*btf.Struct]("bpf_iter__udp"), "socket termination")
	out = append(out, terminationPrograms())

	out = append(out, attachTypes(mount)...)
	return out
}

// Missing returns the required features that are not there.
func Missing(fs []Feature) []Feature {
	var missing []Feature
	for _, f := range fs {
		if f.Required && !f.OK {
			missing = append(missing, f)
		}
	}
	return missing
}

// Require returns an error naming every missing required feature.
func Require(bpffsDir string) error {
	missing := Missing(Check(bpffsDir))
	if len(missing) == 0 {
		return nil
	}
	var names []string
	for _, f := range missing {
		names = append(names, fmt.Sprintf("%s (%s)", f.Name, f.Detail))
	}
	return fmt.Errorf("kernel lacks required features: %s", strings.Join(names, "; "))
}

func checkBPFFS(dir string) error {
	parent := filepath.Dir(dir)
	var fs unix.Statfs_t
	if err := unix.Statfs(parent, &fs); err != nil {
		return fmt.Errorf("%s: %w", parent, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	// Not mounted yet: fine if the kernel has bpffs, since the first load
	// mounts it.
	known, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(known), "\tbpf\n") {
		return fmt.Errorf("%s is not bpffs and the kernel has no bpf filesystem", parent)
	}
	return nil
}

func haveKernelType[T btf.Type](name string) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return err
	}
	var t T
	if err := spec.TypeByName(name, &t); err != nil {
		return fmt.Errorf("%s not in kernel BTF", name)
	}
	return nil
}

// attachTypes loads the real programs and attaches each one with a
// bpf_link to a fresh, empty cgroup, which is then removed: one line per
// attach type, the definitive probe.
func attachTypes(mount string) []Feature {
	fail := func(err error) []Feature {
		return []Feature{{Name: "load portcullis programs", Required: true, Detail: err.Error()}}
	}
	if mount == "" {
		return fail(errors.New("no cgroup v2 mount"))
	}
	spec, err := bpfobj.LoadPortcullis()
	if err != nil {
		return fail(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return fail(err)
	}
	defer coll.Close()
	dir, err := os.MkdirTemp(mount, "portcullis-doctor-")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(dir)
	var out []Feature
	for _, name := range sortedKeys(spec.Programs) {
		p := spec.Programs[name]
		switch p.Type {
		case ebpf.CGroupSockAddr, ebpf.CGroupSock, ebpf.CGroupSKB, ebpf.CGroupSockopt, ebpf.SockOps:
		default:
			continue
		}
		f := Feature{Name: "attach type " + p.AttachType.String(), Required: true, OK: true, Detail: "program " + name}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: p.AttachType, Program: coll.Programs[name]})
		if err == nil {
			// Only a bpf_link can be pinned; the legacy attach would
			// not outlive the tool.
			if _, err = l.Info(); err != nil {
				err = fmt.Errorf("bpf_link not supported: %w", err)
			}
			l.Close()
		}
		if err != nil {
			f.OK, f.Detail = false, fmt.Sprintf("program %s: %v", name, err)
		}
		out = append(out, f)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
