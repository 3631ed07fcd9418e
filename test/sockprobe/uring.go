package main

import (
	"net/netip"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal io_uring client (raw syscalls, no liburing): one ring, one
// request at a time. It exists so the tests can check that socket calls
// made through io_uring meet the same cgroup hooks as the syscalls.

// Opcodes of enum io_uring_op (include/uapi/linux/io_uring.h).
const (
	opConnect = 16
	opBind    = 56 // Linux 6.11
	opListen  = 57 // Linux 6.11

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	enterGetEvents = 1
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64 // addr2
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	fileIndex   uint32
	addr3       uint64
	_           uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// uringDo submits one request and returns its result as an error.
func uringDo(op uint8, fd int, addr unsafe.Pointer, addr2 uint64, length uint32) error {
	var p uringParams
	rfd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return e
	}
	ring := int(rfd)
	defer unix.Close(ring)
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(cqe{})))
	sq, err := unix.Mmap(ring, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(sq)
	cq, err := unix.Mmap(ring, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(cq)
	sqes, err := unix.Mmap(ring, offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(sqes)

	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	tail := atomic.LoadUint32(u32(sq, p.sqOff.tail))
	index := tail & *u32(sq, p.sqOff.ringMask)
	*(*sqe)(unsafe.Pointer(&sqes[0])) = sqe{opcode: op, fd: int32(fd), addr: uint64(uintptr(addr)), off: addr2, len: length}
	*u32(sq, p.sqOff.array+4*index) = 0
	atomic.StoreUint32(u32(sq, p.sqOff.tail), tail+1)

	_, _, e = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), 1, 1, enterGetEvents, 0, 0)
	runtime.KeepAlive(addr)
	if e != 0 {
		return e
	}
	head := atomic.LoadUint32(u32(cq, p.cqOff.head))
	c := (*cqe)(unsafe.Pointer(&cq[p.cqOff.cqes+(head&*u32(cq, p.cqOff.ringMask))*uint32(unsafe.Sizeof(cqe{}))]))
	res := c.res
	atomic.StoreUint32(u32(cq, p.cqOff.head), head+1)
	if res < 0 {
		return unix.Errno(-res)
	}
	return nil
}

func uringConnect(fd int, sa unix.Sockaddr) error {
	name, n := rawOf(sa)
	return uringDo(opConnect, fd, name, uint64(n), 0)
}

func uringBind(fd int, sa unix.Sockaddr) error {
	name, n := rawOf(sa)
	return uringDo(opBind, fd, name, uint64(n), 0)
}

func uringListen(fd, backlog int) error {
	return uringDo(opListen, fd, nil, 0, uint32(backlog))
}

func rawOf(sa unix.Sockaddr) (unsafe.Pointer, uint32) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return rawSockaddr(addrPortOf(sa.Addr[:], sa.Port))
	case *unix.SockaddrInet6:
		return rawSockaddr(addrPortOf(sa.Addr[:], sa.Port))
	}
	return nil, 0
}

func addrPortOf(b []byte, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, uint16(port))
}
