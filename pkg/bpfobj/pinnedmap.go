package bpfobj

import (
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// LoadPinnedMap opens a map of the state's layout, as ebpf.LoadPinnedMap
// does without its check of the object's type: that readlink of
// /proc/self/fd/N was a third of opening a map, and every CNI or hook call
// opens a dozen. The paths are the state's own, where only maps are
// pinned (a program or link there fails at the first map operation).
func LoadPinnedMap(path string) (*ebpf.Map, error) {
	fd, err := ObjGet(path)
	if err != nil {
		return nil, fmt.Errorf("pinned map %s: %w", path, err)
	}
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("pinned map %s: %w", path, err)
	}
	return m, nil
}

// ObjGet opens the pinned object at path (BPF_OBJ_GET) and returns its
// file descriptor, which the caller closes.
func ObjGet(path string) (int, error) {
	name, err := unix.BytePtrFromString(path)
	if err != nil {
		return -1, err
	}
	// union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
	attr := struct {
		pathname  uint64
		bpfFD     uint32
		fileFlags uint32
		pathFD    int32
		_         uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(name)))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(name)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// DetachPinnedLink detaches the link pinned at path (BPF_LINK_DETACH, so
// its hook no longer runs when this returns) and removes the pin. Unlike
// link.LoadPinnedLink it reads neither /proc/self/fd nor the link's info:
// a detach of an attachment detaches 15 of them. A link already defunct
// (its cgroup gone) is only unpinned.
func DetachPinnedLink(path string) error {
	fd, err := ObjGet(path)
	if err != nil {
		return os.Remove(path)
	}
	attr := struct{ linkFD uint32 }{uint32(fd)}
	unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_DETACH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	unix.Close(fd)
	return os.Remove(path)
}
