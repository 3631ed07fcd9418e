package bench

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/test/testenv"
)

// floorLike returns a new cgroup with a program that does nothing but
// allow on every hook that like has programs on. Its cost against a plain
// cgroup is the kernel's for running any program on those hooks: the part
// of the ratio no program body can remove.
func floorLike(b *testing.B, like cgroup.Cgroup, name string) cgroup.Cgroup {
	b.Helper()
	floor := testenv.Cgroup(b, name)
	f, err := os.Open(like.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for _, at := range testenv.CgroupAttachTypes {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			b.Fatalf("query %s programs of %s: %v", at, like.Path, err)
		}
		if len(r.Programs) == 0 {
			continue
		}
		typ := programType(b, r.Programs[0].ID)
		noop, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "floor",
			Type:         typ,
			AttachType:   at,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		})
		if err != nil {
			b.Fatalf("load a no-op %s program for %s: %v", typ, at, err)
		}
		b.Cleanup(func() { noop.Close() })
		l, err := link.AttachCgroup(link.CgroupOptions{Path: floor.Path, Attach: at, Program: noop})
		if err != nil {
			b.Fatalf("attach the no-op %s program to %s: %v", at, floor.Path, err)
		}
		b.Cleanup(func() { l.Close() })
	}
	return floor
}

func programType(b *testing.B, id ebpf.ProgramID) ebpf.ProgramType {
	b.Helper()
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		b.Fatalf("open program %d: %v", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		b.Fatalf("program %d info: %v", id, err)
	}
	return info.Type
}
