package bpfobj

import (
	"fmt"
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
	name, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("pinned map %s: %w", path, errno)
	}
	m, err := ebpf.NewMapFromFD(int(fd))
	if err != nil {
		return nil, fmt.Errorf("pinned map %s: %w", path, err)
	}
	return m, nil
}
