package ocihook

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/policy"
)

// The annotations that name a container's policy; exactly one of the three
// may be set.
const (
	AnnotationPrefix = "io.portcullis."
	// AnnotationPolicy holds the policy document itself (JSON).
	AnnotationPolicy = "io.portcullis.policy"
	// AnnotationPolicyFile is the path of a policy file: absolute, or
	// relative to the bundle.
	AnnotationPolicyFile = "io.portcullis.policy-file"
	// AnnotationPolicyName names PoliciesDir/NAME.json.
	AnnotationPolicyName = "io.portcullis.policy-name"
)

// DefaultPoliciesDir holds the named policies.
const DefaultPoliciesDir = "/etc/portcullis/policies.d"

// A policy name is a file name in PoliciesDir, never a path out of it.
var validPolicyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// PolicyFromAnnotations builds the container's policy from its
// annotations. Unknown io.portcullis.* keys are errors, so a typo is not
// silently a container without a policy.
func PolicyFromAnnotations(a map[string]string, bundle, policiesDir string) (*policy.Policy, error) {
	var set []string
	for k := range a {
		if !strings.HasPrefix(k, AnnotationPrefix) {
			continue
		}
		switch k {
		case AnnotationPolicy, AnnotationPolicyFile, AnnotationPolicyName:
			set = append(set, k)
		default:
			return nil, fmt.Errorf("unknown annotation %s: use one of %s, %s, %s", k, AnnotationPolicy, AnnotationPolicyFile, AnnotationPolicyName)
		}
	}
	sort.Strings(set)
	if len(set) != 1 {
		return nil, fmt.Errorf("annotations %s: set only one of them", strings.Join(set, ", "))
	}
	switch key := set[0]; key {
	case AnnotationPolicy:
		p, err := policy.Parse([]byte(a[key]))
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", key, err)
		}
		return p, nil
	case AnnotationPolicyFile:
		path := a[key]
		if path == "" {
			return nil, fmt.Errorf("annotation %s is empty", key)
		}
		if !filepath.IsAbs(path) {
			path = filepath.Join(bundle, path)
		}
		p, err := policy.ParseFile(path)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", key, err)
		}
		return p, nil
	default: // AnnotationPolicyName
		name := a[key]
		if !validPolicyName.MatchString(name) {
			return nil, fmt.Errorf("annotation %s: %q is not a policy name (letters, digits, _ . -; the file is %s/NAME.json)", key, name, policiesDir)
		}
		p, err := policy.ParseFile(filepath.Join(policiesDir, name+".json"))
		if err != nil {
			return nil, fmt.Errorf("annotation %s: policy %q: %w", key, name, err)
		}
		return p, nil
	}
}
