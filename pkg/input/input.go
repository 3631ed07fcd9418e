// Package input reads what portcullis is given — files named by a policy
// flag, an annotation or a conf, and stdin — with limits, so that no input
// can make a root process block forever or grow without bound.
//
// A named file is read only when it is a regular file. The check is made
// on a descriptor, not on the path first, so the file cannot be swapped
// between check and read; and that descriptor is an O_PATH one, which opens
// nothing: opening some devices has effects of its own (a watchdog starts
// its countdown, a tape rewinds, a FIFO blocks until a writer comes), and
// an annotation must not be able to cause them. Only once the descriptor is
// known to be a regular file is the same inode opened for reading, through
// /proc/self/fd.
package input

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// MaxSize is the largest file or stdin portcullis reads: a policy, a conf
// or a state document is a few hundred bytes; a megabyte holds thousands
// of services.
const MaxSize = 1 << 20

// StdinTimeout bounds how long a front end waits for stdin to end. The
// runtime writes the conf or the state at once and closes the pipe.
const StdinTimeout = 10 * time.Second

// ReadFile reads path, following symlinks, when it is a regular file of at
// most MaxSize bytes. Errors name the path and what to fix in one line.
func ReadFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("empty file name")
	}
	pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := regular(path, &st); err != nil {
		return nil, err
	}
	// O_NONBLOCK and O_NOCTTY change nothing for a regular file; they are
	// there should the inode ever not be one.
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var again unix.Stat_t
	if err := unix.Fstat(fd, &again); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if again.Dev != st.Dev || again.Ino != st.Ino {
		return nil, fmt.Errorf("%s changed while it was opened", path)
	}
	if st.Size > MaxSize {
		return nil, tooLarge(path)
	}
	return readLimited(f, path)
}

// regular refuses everything but a regular file, naming what it is.
func regular(path string, st *unix.Stat_t) error {
	var kind string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return nil
	case unix.S_IFDIR:
		kind = "a directory"
	case unix.S_IFIFO:
		kind = "a FIFO"
	case unix.S_IFCHR:
		kind = "a character device"
	case unix.S_IFBLK:
		kind = "a block device"
	case unix.S_IFSOCK:
		kind = "a socket"
	default:
		kind = "not a regular file"
	}
	return fmt.Errorf("%s is %s: portcullis reads only regular files", path, kind)
}

func tooLarge(what string) error {
	return fmt.Errorf("%s is larger than the %d-byte (1 MiB) input limit", what, MaxSize)
}

// readLimited reads r to its end, failing past MaxSize.
func readLimited(r io.Reader, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(data) > MaxSize {
		return nil, tooLarge(what)
	}
	return data, nil
}

// ReadStdin reads r (the front end's stdin) to its end, failing past
// MaxSize or when it has not ended within StdinTimeout. On timeout the
// reading goroutine stays blocked; the caller is expected to exit.
func ReadStdin(r io.Reader) ([]byte, error) {
	return readWithin(r, StdinTimeout)
}

func readWithin(r io.Reader, timeout time.Duration) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := readLimited(r, "stdin")
		done <- result{data, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case res := <-done:
		return res.data, res.err
	case <-timer.C:
		return nil, fmt.Errorf("stdin did not end within %v: the caller must write the whole document and close stdin", timeout)
	}
}

// OpenAppend opens path for appending, creating it when it does not exist,
// when it is a regular file: a log must never be a FIFO (the write would
// block) or a device (opening one can have effects of its own). As in
// ReadFile, an existing path is checked on an O_PATH descriptor before
// it is opened for writing.
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	const flags = unix.O_WRONLY | unix.O_APPEND | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	for range 3 {
		pfd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			fd, err := unix.Open(path, flags|unix.O_CREAT|unix.O_EXCL, uint32(perm.Perm()))
			if errors.Is(err, unix.EEXIST) {
				continue // created meanwhile: check what it is
			} else if err != nil {
				return nil, &os.PathError{Op: "create", Path: path, Err: err}
			}
			return os.NewFile(uintptr(fd), path), nil
		} else if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		var st unix.Stat_t
		err = unix.Fstat(pfd, &st)
		if err == nil {
			err = regular(path, &st)
		}
		if err != nil {
			unix.Close(pfd)
			return nil, err
		}
		fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), flags, 0)
		unix.Close(pfd)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
	return nil, fmt.Errorf("%s keeps changing while it is opened", path)
}
