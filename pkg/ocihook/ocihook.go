// Package ocihook is the logic of portcullis-hook, the OCI runtime hook
// that gives a container its policy when no CNI plugin is called for it
// (host-network containers, runc run by hand). The runtime runs the hook
// with the container's state on stdin; the stage comes from the hook's
// arguments:
//
//	createRuntime, prestart  attach the policy named by the annotations
//	poststop                 detach it; never fails for what is gone
//	auto                     the stage the state's status implies
//
// "auto" is for hooks.d files (podman, CRI-O), which run one command line
// at every stage they list.
//
// A container without an io.portcullis.* annotation is left alone, so the
// hook can be installed for every container.
package ocihook

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/portcullis-net/portcullis/pkg/input"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Stages the hook handles.
const (
	StageCreateRuntime = "createRuntime"
	StagePrestart      = "prestart"
	StagePoststop      = "poststop"
	// StageAuto takes the stage from the state's status: "creating" or
	// "created" attach, "stopped" detaches.
	StageAuto = "auto"
)

// Owner marks the attachments the hook makes, so poststop never detaches
// what another tool attached under the same id.
const Owner = "oci-hook"

// Config says where the hook finds its state and named policies; the
// zero value means the defaults.
type Config struct {
	// StateDir is the pinned state; empty means state.Dir().
	StateDir string
	// PoliciesDir holds named policies; empty means DefaultPoliciesDir.
	PoliciesDir string
}

// ConfigFromEnv reads PORTCULLIS_STATE_DIR and PORTCULLIS_POLICIES_DIR, which
// a hook entry can set through its "env".
func ConfigFromEnv() Config {
	return Config{StateDir: state.Dir(), PoliciesDir: os.Getenv("PORTCULLIS_POLICIES_DIR")}
}

// Run handles one invocation: stage is the hook's first argument, stdin
// the container state the runtime writes.
func Run(cfg Config, stage string, stdin io.Reader) error {
	if cfg.StateDir == "" {
		cfg.StateDir = state.Dir()
	}
	if cfg.PoliciesDir == "" {
		cfg.PoliciesDir = DefaultPoliciesDir
	}
	switch stage {
	case StageCreateRuntime, StagePrestart, StagePoststop, StageAuto:
	case "":
		return errors.New("no stage given: run as portcullis-hook createRuntime|prestart|poststop|auto")
	default:
		return fmt.Errorf("unknown stage %q: portcullis-hook handles createRuntime, prestart, poststop and auto", stage)
	}
	st, err := readState(stdin)
	if err != nil {
		return err
	}
	if stage == StageAuto {
		switch st.Status {
		case specs.StateCreating, specs.StateCreated:
			stage = StageCreateRuntime
		case specs.StateStopped:
			stage = StagePoststop
		default:
			return fmt.Errorf("container %s: stage auto: status %q is neither creating, created nor stopped", st.ID, st.Status)
		}
	}
	if stage == StagePoststop {
		return poststop(cfg, st)
	}
	return create(cfg, st)
}

// readState decodes the runtime's state JSON and checks the fields every
// stage needs.
func readState(r io.Reader) (*specs.State, error) {
	data, err := input.ReadStdin(r)
	if err != nil {
		return nil, fmt.Errorf("read container state from stdin: %w", err)
	}
	var st specs.State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("container state on stdin is not valid JSON: %v", err)
	}
	if st.ID == "" {
		return nil, errors.New("container state on stdin has no \"id\"")
	}
	if st.Bundle == "" {
		return nil, fmt.Errorf("container %s: state on stdin has no \"bundle\"", st.ID)
	}
	return &st, nil
}

// readConfig reads the bundle's config.json.
func readConfig(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	data, err := input.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %v", path, err)
	}
	return &spec, nil
}

// annotations merges the config's annotations with the state's (newer
// runtimes copy them into the state; the config is what the user wrote,
// so it wins).
func annotations(st *specs.State, spec *specs.Spec) map[string]string {
	all := map[string]string{}
	for k, v := range st.Annotations {
		all[k] = v
	}
	if spec != nil {
		for k, v := range spec.Annotations {
			all[k] = v
		}
	}
	return all
}

// hasPortcullisAnnotation reports whether the container asks for a policy.
func hasPortcullisAnnotation(a map[string]string) bool {
	for k := range a {
		if strings.HasPrefix(k, AnnotationPrefix) {
			return true
		}
	}
	return false
}

// validID is what state.ValidateID accepts.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_:-]*$`)

// maxID is the longest attachment id state accepts.
const maxID = 127

// AttachmentID maps a container id to an attachment id. Ids state accepts
// are kept as they are; others (runc allows dots and "+", bpffs refuses
// dots) have every other character replaced by "_" and a hash of the
// original appended, so two ids never map to the same attachment and the
// same id always maps to the same one, at createRuntime and at poststop.
func AttachmentID(containerID string) string {
	if len(containerID) <= maxID && validID.MatchString(containerID) {
		return containerID
	}
	sum := sha256.Sum256([]byte(containerID))
	suffix := "-" + hex.EncodeToString(sum[:6])
	clean := []byte(containerID)
	for i, c := range clean {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == ':' || c == '-') {
			clean[i] = '_'
		}
	}
	id := string(clean)
	if len(id)+len(suffix) > maxID {
		id = id[:maxID-len(suffix)]
	}
	if id == "" || !validID.MatchString(id[:1]) {
		id = "c" + id
		if len(id)+len(suffix) > maxID {
			id = id[:maxID-len(suffix)]
		}
	}
	return id + suffix
}
