package input

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	regularFile := filepath.Join(dir, "policy.json")
	os.WriteFile(regularFile, []byte(`{"allowedPorts": ["19000"]}`), 0o644)
	atLimit := filepath.Join(dir, "at-limit.json")
	os.WriteFile(atLimit, bytes.Repeat([]byte(" "), MaxSize), 0o644)
	over := filepath.Join(dir, "over.json")
	os.WriteFile(over, bytes.Repeat([]byte(" "), MaxSize+1), 0o644)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	toZero := filepath.Join(dir, "zero")
	os.Symlink("/dev/zero", toZero)
	toPolicy := filepath.Join(dir, "link.json")
	os.Symlink(regularFile, toPolicy)

	for _, tc := range []struct {
		path, want string
		size       int
	}{
		{path: regularFile, size: 27},
		{path: toPolicy, size: 27},
		{path: atLimit, size: MaxSize},
		{path: "/proc/self/status", size: -1}, // a size-0 regular file that has content
		{path: over, want: over + " is larger than the 1048576-byte (1 MiB) input limit"},
		{path: fifo, want: fifo + " is a FIFO: portcullis reads only regular files"},
		{path: "/dev/zero", want: "/dev/zero is a character device"},
		{path: toZero, want: toZero + " is a character device"},
		{path: dir, want: dir + " is a directory"},
		{path: filepath.Join(dir, "missing"), want: "no such file or directory"},
		{path: "", want: "empty file name"},
	} {
		start := time.Now()
		data, err := ReadFile(tc.path)
		if time.Since(start) > 2*time.Second {
			t.Errorf("ReadFile(%q) took %v", tc.path, time.Since(start))
		}
		if tc.want != "" {
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("ReadFile(%q): %v, want one line containing %q", tc.path, err, tc.want)
			}
			continue
		}
		if err != nil || (tc.size >= 0 && len(data) != tc.size) || len(data) == 0 {
			t.Errorf("ReadFile(%q): %d bytes, %v; want %d", tc.path, len(data), err, tc.size)
		}
	}
}

func TestReadStdin(t *testing.T) {
	if data, err := readWithin(strings.NewReader("{}"), time.Second); err != nil || string(data) != "{}" {
		t.Errorf("small stdin: %q %v", data, err)
	}
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	if _, err := readWithin(zero, 5*time.Second); err == nil || err.Error() != "stdin is larger than the 1048576-byte (1 MiB) input limit" {
		t.Errorf("endless stdin: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	start := time.Now()
	if _, err := readWithin(r, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "stdin did not end within 200ms") {
		t.Errorf("stdin never closed: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %v", d)
	}
}

func TestOpenAppend(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	for i := 0; i < 2; i++ { // creates, then appends
		f, err := OpenAppend(log, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("line\n")
		f.Close()
	}
	if data, _ := os.ReadFile(log); string(data) != "line\nline\n" {
		t.Errorf("log: %q", data)
	}
	fifo := filepath.Join(dir, "fifo")
	unix.Mkfifo(fifo, 0o600)
	for path, want := range map[string]string{
		fifo:        fifo + " is a FIFO",
		"/dev/null": "/dev/null is a character device",
		dir:         dir + " is a directory",
	} {
		if f, err := OpenAppend(path, 0o600); err == nil || !strings.Contains(err.Error(), want) {
			f.Close()
			t.Errorf("OpenAppend(%s): %v, want %q", path, err, want)
		}
	}
}
