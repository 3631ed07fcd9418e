package ocihook

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/input"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func TestAttachmentID(t *testing.T) {
	for _, id := range []string{"web", "a.b", "a_b", "_x", "a+b.c", strings.Repeat("x", 200), strings.Repeat("y.", 100)} {
		got := AttachmentID(id)
		if err := state.ValidateID(got); err != nil {
			t.Errorf("AttachmentID(%q) = %q: %v", id, got, err)
		}
		if again := AttachmentID(id); again != got {
			t.Errorf("AttachmentID(%q) is not deterministic: %q, %q", id, got, again)
		}
	}
	if got := AttachmentID("web-1"); got != "web-1" {
		t.Errorf("a valid id is changed: %q", got)
	}
	if AttachmentID("a.b") == AttachmentID("a_b") {
		t.Error("a.b and a_b map to the same attachment id")
	}
}

func TestPolicyFromAnnotations(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "web.json"), []byte(`{"allowedPorts": ["8080"]}`), 0o644)
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"allowedPort": ["8080"]}`), 0o644)
	// The cases: a FIFO nobody writes (the hook blocked forever)
	// and /dev/zero (it grew past 1 GiB); an oversized file too.
	unix.Mkfifo(filepath.Join(dir, "fifo.json"), 0o600)
	os.Symlink("/dev/zero", filepath.Join(dir, "zero.json"))
	os.WriteFile(filepath.Join(dir, "huge.json"), append([]byte(`{"allowedPorts": ["19000"]}`), bytes.Repeat([]byte(" "), input.MaxSize)...), 0o644)
	for _, tc := range []struct {
		ann     map[string]string
		wantErr string
	}{
		{map[string]string{AnnotationPolicy: `{"addresses": ["127.0.0.5"]}`}, ""},
		{map[string]string{AnnotationPolicyFile: "web.json"}, ""},
		{map[string]string{AnnotationPolicyFile: filepath.Join(dir, "web.json")}, ""},
		{map[string]string{AnnotationPolicyName: "web"}, ""},
		{map[string]string{AnnotationPolicy: `{"addresses": ["nope"]}`}, `annotation io.portcullis.policy: invalid policy: addresses[0]: "nope" is not an IP address`},
		{map[string]string{AnnotationPolicy: `{`}, "annotation io.portcullis.policy: invalid policy: malformed JSON"},
		{map[string]string{AnnotationPolicyFile: "missing.json"}, "annotation io.portcullis.policy-file: read policy: open " + dir + "/missing.json: no such file or directory"},
		{map[string]string{AnnotationPolicyName: "bad"}, `unknown field "allowedPort"`},
		{map[string]string{AnnotationPolicyName: "../web"}, `"../web" is not a policy name`},
		{map[string]string{AnnotationPolicyName: "other"}, `policy "other": read policy`},
		{map[string]string{AnnotationPolicy: `{}`, AnnotationPolicyName: "web"}, "annotations io.portcullis.policy, io.portcullis.policy-name: set only one of them"},
		{map[string]string{"io.portcullis.polcy": `{}`}, "unknown annotation io.portcullis.polcy"},
		{map[string]string{AnnotationPolicyFile: "fifo.json"}, "read policy: " + dir + "/fifo.json is a FIFO: portcullis reads only regular files"},
		{map[string]string{AnnotationPolicyFile: "/dev/zero"}, "read policy: /dev/zero is a character device: portcullis reads only regular files"},
		{map[string]string{AnnotationPolicyFile: "zero.json"}, "zero.json is a character device"},
		{map[string]string{AnnotationPolicyName: "zero"}, "zero.json is a character device"},
		{map[string]string{AnnotationPolicyFile: "huge.json"}, "huge.json is larger than the 1048576-byte (1 MiB) input limit"},
		{map[string]string{AnnotationPolicyFile: "."}, dir + " is a directory"},
	} {
		p, err := PolicyFromAnnotations(tc.ann, dir, dir)
		switch {
		case tc.wantErr == "" && (err != nil || p == nil):
			t.Errorf("%v: %v", tc.ann, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%v: error %v, want %q", tc.ann, err, tc.wantErr)
		}
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		stage, stdin, wantErr string
	}{
		{"", `{}`, "no stage given"},
		{"poststart", `{}`, `unknown stage "poststart"`},
		{"auto", `{"id": "c1", "bundle": "/x", "status": "running"}`, `container c1: stage auto: status "running" is neither creating, created nor stopped`},
		{"createRuntime", `{"id": `, "container state on stdin is not valid JSON"},
		{"createRuntime", `{"bundle": "/x"}`, `has no "id"`},
		{"createRuntime", `{"id": "c1"}`, `container c1: state on stdin has no "bundle"`},
		{"createRuntime", `{"id": "c1", "bundle": "/nonexistent", "pid": 1}`, "container c1: read bundle config: open /nonexistent/config.json: no such file or directory"},
	} {
		err := Run(Config{StateDir: "/nonexistent/state"}, tc.stage, strings.NewReader(tc.stdin))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("stage %q stdin %q: error %v, want %q", tc.stage, tc.stdin, err, tc.wantErr)
		}
	}
}
