package ocihook

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/hostaddr"
	"github.com/portcullis-net/portcullis/pkg/packetcaps"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

// create attaches the container's policy (createRuntime, prestart). The
// container's process exists and is in its cgroup, but has not run the
// user's program yet, so every socket it makes sees the policy.
func create(cfg Config, st *specs.State) error {
	spec, err := readConfig(st.Bundle)
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	ann := annotations(st, spec)
	if !hasPortcullisAnnotation(ann) {
		return nil
	}
	p, err := PolicyFromAnnotations(ann, st.Bundle, cfg.PoliciesDir)
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	if st.Pid <= 0 {
		return fmt.Errorf("container %s: state on stdin has no pid (run portcullis-hook at createRuntime or prestart)", st.ID)
	}
	cg, err := containerCgroup(st.Pid, spec)
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	netns, err := containerNetNS(st.Pid, spec)
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	// Packet sockets pass no hook: a host-network container that could
	// open them is refused before anything is attached.
	if err := packetcaps.CheckSpec(p, spec, netns == ""); err != nil {
		// An address Attach would refuse is the first thing to fix.
		if aerr := hostaddr.CheckLocal(netns, p.Addresses); aerr != nil {
			return fmt.Errorf("container %s: %w", st.ID, aerr)
		}
		return fmt.Errorf("container %s: %w", st.ID, err)
	}

	s, err := state.OpenOrLoad(cfg.StateDir)
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	defer s.Close()
	id := AttachmentID(st.ID)
	if old, err := s.Get(id); err == nil && old.Owner == Owner {
		if old.CgroupID == cg.ID {
			return nil // the runtime ran the hook twice
		}
		// A container of the same id whose poststop never ran (the
		// runtime was killed): its cgroup is gone, so its attachment
		// is stale and gives way.
		if !old.Cgroup().Exists() {
			if err := s.Detach(id); err != nil {
				return fmt.Errorf("container %s: remove stale attachment: %w", st.ID, err)
			}
		}
	}
	_, err = s.Attach(state.AttachRequest{ID: id, Cgroup: cg.Path, Policy: p, NetNS: netns, Owner: Owner})
	if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	return nil
}

// poststop detaches the container's policy. Whatever is already gone (the
// bundle, the cgroup, the attachment, the whole state) is not an error: a
// poststop failure cannot help anyone.
func poststop(cfg Config, st *specs.State) error {
	// Unannotated containers never take the state lock. When the config
	// cannot be read the container may still have been attached, so the
	// hook looks.
	if spec, err := readConfig(st.Bundle); err == nil && !hasPortcullisAnnotation(annotations(st, spec)) {
		return nil
	}
	s, err := state.Open(cfg.StateDir, true)
	if errors.Is(err, state.ErrNotLoaded) {
		return nil
	} else if err != nil {
		return fmt.Errorf("container %s: %w", st.ID, err)
	}
	defer s.Close()
	id := AttachmentID(st.ID)
	a, err := s.Get(id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		// Detach also removes a link folder left without its record.
		if err := s.Detach(id); err != nil && !errors.Is(err, state.ErrNotFound) {
			return fmt.Errorf("container %s: %w", st.ID, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("container %s: %w", st.ID, err)
	case a.Owner != Owner:
		return nil // attached by another tool under this id: not ours to remove
	}
	// The container no longer serves: its clients' sockets are destroyed
	// too. A failure there is logged on stderr and never fails poststop.
	if _, err := terminate.Detach(s, id, os.Stderr); err != nil && !errors.Is(err, state.ErrNotFound) {
		return fmt.Errorf("container %s: detach: %w", st.ID, err)
	}
	return nil
}

// containerCgroup returns the container's cgroup v2 directory: where its
// process is (the "0::" line of /proc/PID/cgroup, right on hybrid hosts
// too), cross-checked against config.json's linux.cgroupsPath.
func containerCgroup(pid int, spec *specs.Spec) (cgroup.Cgroup, error) {
	cg, err := cgroup.OfPID(pid)
	if err != nil {
		return cgroup.Cgroup{}, err
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return cgroup.Cgroup{}, err
	}
	// Programs on the root cgroup, or on the cgroup the runtime runs in,
	// would apply to the whole host or to the runtime itself.
	if err := cgroup.RefuseRoot(cg); err != nil {
		return cgroup.Cgroup{}, fmt.Errorf("process %d: %w", pid, err)
	}
	if self, err := cgroup.OfPID(os.Getpid()); err == nil && self.ID == cg.ID {
		return cgroup.Cgroup{}, fmt.Errorf("process %d shares the runtime's cgroup %s; the runtime did not give the container a cgroup of its own", pid, cg.Path)
	}
	if spec.Linux != nil {
		if want := spec.Linux.CgroupsPath; strings.HasPrefix(want, "/") {
			// A cgroupfs path: the process is in it or below it. A
			// nested cgroup namespace may add a prefix. (systemd's
			// "slice:prefix:name" form is not checked.)
			rel := strings.TrimPrefix(cg.Path, mount)
			want = filepath.Clean(want)
			if rel != want && !strings.HasPrefix(rel, want+"/") && !strings.HasSuffix(rel, want) {
				return cgroup.Cgroup{}, fmt.Errorf("process %d is in cgroup %s, not in linux.cgroupsPath %s of config.json", pid, cg.Path, want)
			}
		}
	}
	return cg, nil
}

// containerNetNS returns the network namespace the container's sockets
// live in when it is not the runtime's (the host's), so that the policy's
// addresses are checked where the container will bind them. It prefers
// the path config.json names, which outlives the process.
func containerNetNS(pid int, spec *specs.Spec) (string, error) {
	procPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	var theirs, ours unix.Stat_t
	if err := unix.Stat(procPath, &theirs); err != nil {
		return "", fmt.Errorf("network namespace of process %d: %w", pid, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &ours); err != nil {
		return "", fmt.Errorf("own network namespace: %w", err)
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return "", nil // host network
	}
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			var named unix.Stat_t
			if ns.Type == specs.NetworkNamespace && ns.Path != "" &&
				unix.Stat(ns.Path, &named) == nil && named.Dev == theirs.Dev && named.Ino == theirs.Ino {
				return ns.Path, nil
			}
		}
	}
	return procPath, nil
}
