// Package conf holds example configuration; its test keeps every example
// valid.
package conf

import (
	"path/filepath"
	"testing"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

func TestExamplePoliciesParse(t *testing.T) {
	files, _ := filepath.Glob("policies/*.json")
	if len(files) == 0 {
		t.Fatal("no example policies")
	}
	for _, f := range files {
		if _, err := policy.ParseFile(f); err != nil {
			t.Error(err)
		}
	}
}
