package testenv

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// LinkProgram returns the id of the program the pinned link at path runs.
func LinkProgram(t testing.TB, path string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatalf("link %s: %v", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatalf("link %s: %v", path, err)
	}
	return info.Program
}

// PinnedProgram returns the id of the program pinned at path.
func PinnedProgram(t testing.TB, path string) ebpf.ProgramID {
	t.Helper()
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		t.Fatalf("program %s: %v", path, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatalf("program %s: %v", path, err)
	}
	id, _ := info.ID()
	return id
}

// CgroupAttachTypes are the cgroup attach types a portcullis attachment
// can use.
var CgroupAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Bind, ebpf.AttachCGroupInet6Bind, ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupInet4PostBind, ebpf.AttachCGroupInet6PostBind, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg, ebpf.AttachCgroupInet4GetSockname, ebpf.AttachCgroupInet6GetSockname,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCgroupInetSockRelease,
	ebpf.AttachCGroupInetSockCreate, ebpf.AttachCGroupInetIngress, ebpf.AttachCGroupInetEgress,
	ebpf.AttachCGroupSockOps, ebpf.AttachCGroupGetsockopt, ebpf.AttachCGroupSetsockopt,
}
