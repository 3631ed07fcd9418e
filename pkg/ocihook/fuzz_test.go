package ocihook

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzState feeds the hook's parsing arbitrary container states, as the
// runtime writes them to stdin, with annotations that name a policy
// inline, by file (relative to a bundle, or absolute: any path, FIFOs and
// devices included) or by name. Nothing may panic or block, and errors
// are one line, as the runtime shows them.
func FuzzState(f *testing.F) {
	bundle := f.TempDir()
	policies := f.TempDir()
	os.WriteFile(filepath.Join(bundle, "p.json"), []byte(`{"allowedPorts": ["19000"]}`), 0o644)
	os.WriteFile(filepath.Join(policies, "web.json"), []byte(`{"allowedPorts": ["19080"]}`), 0o644)
	for _, seed := range []string{
		`{"ociVersion": "1.2.0", "id": "c19", "status": "creating", "pid": 4242, "bundle": "/b", "annotations": {"io.portcullis.policy": "{\"allowedPorts\": [\"19000\"]}"}}`,
		`{"ociVersion": "1.2.0", "id": "c19", "status": "creating", "pid": 4242, "bundle": "/b", "annotations": {"io.portcullis.policy-file": "p.json"}}`,
		`{"ociVersion": "1.2.0", "id": "c19", "status": "stopped", "bundle": "/b", "annotations": {"io.portcullis.policy-name": "web"}}`,
		`{"id": "c19", "bundle": "/b", "annotations": {"io.portcullis.policy-file": "/dev/zero"}}`,
		`{"id": "c19", "bundle": "/b", "annotations": {"io.portcullis.policy-file": "../../../../proc/self/status"}}`,
		`{"id": "c19", "bundle": "/b", "annotations": {"io.portcullis.policy-name": "../web"}}`,
		`{"id": "c19", "bundle": "/b", "annotations": {"io.portcullis.polcy": "{}", "io.portcullis.policy": "{}"}}`,
		`{"id": "", "bundle": ""}`, `{"id": 19}`, `{"pid": -1, "id": "x", "bundle": "b"}`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, stdin []byte) {
		st, err := readState(bytes.NewReader(stdin))
		if err != nil {
			oneLine(t, err)
			return
		}
		ann := annotations(st, nil)
		if !hasPortcullisAnnotation(ann) {
			return
		}
		if _, err := PolicyFromAnnotations(ann, bundle, policies); err != nil {
			oneLine(t, err)
		}
	})
}

func oneLine(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is more than one line: %q", err)
	}
}
