package services

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/input"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// DefaultDir holds service declarations, one or more per *.json file.
const DefaultDir = "/etc/portcullis/services.d"

// Dir is $PORTCULLIS_SERVICES_DIR or DefaultDir (tests use their own).
func Dir() string {
	if d := os.Getenv("PORTCULLIS_SERVICES_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// ParseDeclarations reads one declaration or a JSON array of them,
// rejecting unknown fields.
func ParseDeclarations(data []byte) ([]Declaration, error) {
	data = bytes.TrimSpace(data)
	var list []Declaration
	if len(data) > 0 && data[0] == '[' {
		if err := policy.DecodeStrict(data, &list); err != nil {
			return nil, err
		}
	} else {
		var d Declaration
		if err := policy.DecodeStrict(data, &d); err != nil {
			return nil, err
		}
		list = []Declaration{d}
	}
	for i := range list {
		if err := list[i].Validate(); err != nil {
			return nil, err
		}
	}
	return list, nil
}

// LoadDir reads every *.json file of dir in name order. A missing dir
// declares nothing.
func LoadDir(dir string) ([]Declaration, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var all []Declaration
	for _, path := range paths {
		data, err := input.ReadFile(path)
		if err != nil {
			return nil, err
		}
		list, err := ParseDeclarations(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		all = append(all, list...)
	}
	return all, nil
}

// Apply puts every declaration (idempotent: applying the same list again
// changes nothing). Services not in the list are left alone: others may
// have been added with portcullisctl.
func (m *Maps) Apply(decls []Declaration, providers []Provider) error {
	seen := map[string]bool{}
	for _, d := range decls {
		if seen[d.Name] {
			return fmt.Errorf("service %s is declared twice", d.Name)
		}
		seen[d.Name] = true
	}
	var errs []string
	for _, d := range decls {
		if err := m.Put(d, providers); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
