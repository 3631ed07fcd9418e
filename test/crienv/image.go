// Package crienv runs containerd with its CRI plugin for the tests and
// benchmarks, as kubelet would use it: a containerd of the test's own in a
// test-made "host" network namespace, a locally built busybox image (there
// is no registry), crictl, and pods in kubelet's cgroup layout.
package crienv

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"github.com/portcullis-net/portcullis/test/testenv"
)

// BusyboxImage is the name of the image BuildBusyboxArchive makes: there
// is no registry here, so the CRI tests import it (also as the sandbox
// image) with ctr -n k8s.io images import.
const BusyboxImage = "docker.io/portcullis/busybox:test"

// busyboxApplets are linked in /bin of the image.
var busyboxApplets = []string{"sh", "nc", "sleep", "echo", "wget", "httpd", "cat", "ls"}

// BuildBusyboxArchive writes an OCI image layout archive (the format `ctr
// images import` reads) of one uncompressed layer holding busybox-static
// and its applets. Its default command sleeps, so it serves as the pod
// sandbox ("pause") image too.
func BuildBusyboxArchive(t testing.TB, path string) {
	t.Helper()
	busybox, err := os.ReadFile(testenv.RequireCommand(t, "busybox", "busybox-static"))
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777})
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(busybox))})
	tw.Write(busybox)
	for _, applet := range busyboxApplets {
		tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	tw.Close()

	blobs := map[string][]byte{}
	add := func(data []byte) (string, int) {
		sum := sha256.Sum256(data)
		digest := "sha256:" + hex.EncodeToString(sum[:])
		blobs[digest] = data
		return digest, len(data)
	}
	mustJSON := func(v any) []byte {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	layerDigest, layerSize := add(layer.Bytes())
	configDigest, configSize := add(mustJSON(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": []string{"/bin/sleep", "1000000"}, "Env": []string{"PATH=/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	}))
	manifestDigest, manifestSize := add(mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	}))
	index := mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": BusyboxImage, "org.opencontainers.image.ref.name": "test"},
		}},
	})

	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := tar.NewWriter(f)
	file := func(name string, data []byte) {
		out.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
		out.Write(data)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", index)
	for digest, data := range blobs {
		file("blobs/sha256/"+digest[len("sha256:"):], data)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
