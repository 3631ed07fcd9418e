package cni

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestErrorCarriesCNIVersion: the conf's version when the plugin speaks
// it, else the newest it speaks.
func TestErrorCarriesCNIVersion(t *testing.T) {
	for conf, want := range map[string]string{
		`{"cniVersion": "0.4.0", "name": "n"}`: "0.4.0",
		`{"cniVersion": "1.0.0"}`:              "1.0.0",
		`{"cniVersion": "9.9.9"}`:              "1.1.0",
		`{"cniVersion": 1}`:                    "1.1.0",
		`{"cniVersion": "1.0.0", `:             "1.1.0",
		``:                                     "1.1.0",
		`{}`:                                   "1.1.0",
	} {
		var out bytes.Buffer
		printError(&out, []byte(conf), types.NewError(types.ErrInvalidNetworkConfig, "bad", ""))
		var got map[string]any
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("%s: %v", out.String(), err)
		}
		if got["cniVersion"] != want || got["code"] != float64(7) || got["msg"] != "bad" || len(got) != 3 {
			t.Errorf("conf %q: error %s, want cniVersion %s, code 7, msg", conf, out.String(), want)
		}
	}
}
