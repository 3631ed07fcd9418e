package cni

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/portcullis-net/portcullis/pkg/input"
)

// logger writes the plugin's diagnostics to the conf's logFile. stdout
// belongs to the CNI protocol and runtimes often drop stderr, so nothing
// else is written anywhere.
type logger struct {
	w      io.Writer
	close  func() error
	prefix string
}

// openLog opens (appends to) path; an empty path discards.
func openLog(path, prefix string) (*logger, error) {
	l := &logger{w: io.Discard, close: func() error { return nil }, prefix: prefix}
	if path == "" {
		return l, nil
	}
	if !filepath.IsAbs(path) {
		// Relative to what? The runtime's working directory is no place
		// for files.
		return l, fmt.Errorf("logFile %q is not an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return l, fmt.Errorf("logFile %s: %w", path, err)
	}
	f, err := input.OpenAppend(path, 0o644)
	if err != nil {
		return l, fmt.Errorf("logFile %s: %w", path, err)
	}
	l.w, l.close = f, f.Close
	return l, nil
}

// printf writes one line. Each line is a single write on an O_APPEND file,
// so concurrent invocations never interleave within a line.
func (l *logger) printf(format string, args ...any) {
	msg := strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")
	fmt.Fprintf(l.w, "%s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), l.prefix, msg)
}
