package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/portcullis-net/portcullis/pkg/bpfobj"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Containers own labels: an attachment whose policy lists a label in
// "dispatch" owns that label in its network namespace. Its bindings are
// installed when it is attached and removed, with its sockets, when it is
// detached; nobody else may bind over them, and only its processes'
// sockets may be registered under its labels.

func init() {
	state.RegisterHook(state.Hook{Attach: attachHook, Detach: detachHook, Update: updateHook})
}

// inNetNS tells whether an attachment's sockets live in namespace ino. An
// attachment without a namespace lives in the caller's (the host's).
func inNetNS(a *state.Attachment, ino uint64) bool {
	have, err := netnsInode(a.NetNS)
	return err == nil && have == ino
}

// owners maps each label owned by an attachment of this namespace to it.
func (d *Dispatcher) owners() (map[string]*state.Attachment, error) {
	list, err := d.s.Attachments()
	if err != nil {
		return nil, err
	}
	owners := map[string]*state.Attachment{}
	for i := range list {
		a := &list[i]
		if len(a.Policy.Dispatch) == 0 || !inNetNS(a, d.ino) {
			continue
		}
		for _, e := range a.Policy.Dispatch {
			if _, taken := owners[e.Label]; !taken {
				owners[e.Label] = a
			}
		}
	}
	return owners, nil
}

// checkOverlap refuses a binding that overlaps one whose label another
// container owns (a container's own bindings may overlap each other, and
// the operator's may overlap the operator's: the most specific wins).
func (d *Dispatcher) checkOverlap(b Binding, owners map[string]*state.Attachment) error {
	if len(owners) == 0 {
		return nil
	}
	mine := owners[b.Label]
	dests, err := d.destinations()
	if err != nil {
		return err
	}
	var conflict error
	err = d.eachRule(func(r *bpfobj.DispatchDispatchRule, dest uint32) {
		k, ok := dests[dest]
		if !ok || conflict != nil {
			return
		}
		label := labelOf(&k)
		owner := owners[label]
		if owner == nil || (mine != nil && owner.ID == mine.ID) {
			return
		}
		if other := bindingOf(r, label); overlaps(b, other) {
			conflict = fmt.Errorf("binding %s overlaps %s of container %s (label %s): choose other addresses or ports", b, other, owner.ID, label)
		}
	})
	return errors.Join(err, conflict)
}

func labelsOf(a *state.Attachment) map[string]bool {
	labels := map[string]bool{}
	for _, e := range a.Policy.Dispatch {
		labels[e.Label] = true
	}
	return labels
}

// attachHook installs an attaching container's bindings, all or none.
func attachHook(s *state.State, a *state.Attachment) (err error) {
	if len(a.Policy.Dispatch) == 0 {
		return nil
	}
	if err := checkShared(a); err != nil {
		return err
	}
	d, err := Open(s, a.NetNS, true)
	if err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	defer d.Close()
	if err := d.checkLabels(a); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.removeLabels(labelsOf(a))
		}
	}()
	return d.bindAll(a)
}

// checkLabels refuses labels another attachment of the namespace owns.
func (d *Dispatcher) checkLabels(a *state.Attachment) error {
	list, err := d.s.Attachments()
	if err != nil {
		return err
	}
	for i, e := range a.Policy.Dispatch {
		for _, other := range list {
			if other.ID != a.ID && inNetNS(&other, d.ino) && labelsOf(&other)[e.Label] {
				return fmt.Errorf("dispatch[%d].label: %s is owned by attachment %s", i, e.Label, other.ID)
			}
		}
	}
	return nil
}

// checkShared keeps a container in the host's network namespace to its own
// addresses. sk_lookup runs before every listener of the namespace, so a
// binding there over, say, 0.0.0.0/0 port 22 would take the host's sshd
// traffic; and a container's policy can come from its own annotations.
// A container in a namespace of its own can only redirect its own traffic,
// so there any prefix is allowed. The operator's `portcullisctl dispatch
// bind` is not limited.
func checkShared(a *state.Attachment) error {
	mine, err := netnsInode(a.NetNS)
	if err != nil {
		return err
	}
	host, err := netnsInode("")
	if err != nil || mine != host {
		return err
	}
	for i, e := range a.Policy.Dispatch {
		b, err := FromPolicy(e)
		if err != nil {
			return fmt.Errorf("dispatch[%d]: %w", i, err)
		}
		if !ownPrefix(&a.Policy, b.Prefix) {
			return fmt.Errorf("dispatch[%d].prefix: %s is not one of the container's addresses; in the host network namespace a container may dispatch only its own addresses (/32 or /128)", i, b.Prefix)
		}
	}
	return nil
}

// ownPrefix tells whether prefix is exactly one of the policy's addresses.
func ownPrefix(p *policy.Policy, prefix netip.Prefix) bool {
	if !prefix.IsSingleIP() {
		return false
	}
	for _, have := range p.Addresses {
		if have.Unmap() == prefix.Addr().Unmap() {
			return true
		}
	}
	return false
}

func (d *Dispatcher) bindAll(a *state.Attachment) error {
	for i, e := range a.Policy.Dispatch {
		b, err := FromPolicy(e)
		if err != nil {
			return fmt.Errorf("dispatch[%d]: %w", i, err)
		}
		if err := d.Bind(b); err != nil {
			return fmt.Errorf("dispatch[%d]: %w", i, err)
		}
	}
	return nil
}

// updateHook follows a policy change (portcullisctl policy set): labels
// the new policy drops go with their sockets, bindings it drops are
// unbound, new ones are bound; kept labels keep their sockets.
func updateHook(s *state.State, old, next *state.Attachment) error {
	if reflect.DeepEqual(old.Policy.Dispatch, next.Policy.Dispatch) {
		return nil
	}
	if err := checkShared(next); err != nil {
		return err
	}
	d, err := Open(s, next.NetNS, len(next.Policy.Dispatch) > 0)
	if errors.Is(err, ErrNoDispatcher) {
		return nil
	} else if err != nil {
		return fmt.Errorf("dispatch: %w", err)
	}
	defer d.Close()
	if err := d.checkLabels(next); err != nil {
		return err
	}
	keep, gone := labelsOf(next), map[string]bool{}
	for label := range labelsOf(old) {
		if !keep[label] {
			gone[label] = true
		}
	}
	if err := d.removeLabels(gone); err != nil {
		return err
	}
	for _, e := range old.Policy.Dispatch {
		if b, err := FromPolicy(e); err == nil && keep[e.Label] && !slices.Contains(next.Policy.Dispatch, e) {
			d.Unbind(b)
		}
	}
	return d.bindAll(next)
}

// detachHook removes a detached container's bindings and sockets, and the
// dispatchers of namespaces that are gone.
func detachHook(s *state.State, a *state.Attachment) error {
	var errs []error
	for _, dir := range dispatchers(s) {
		ino, err := strconv.ParseUint(strings.TrimPrefix(filepath.Base(dir), "netns-"), 10, 64)
		if err == nil && !linkAlive(dir, ino) {
			errs = append(errs, removeDispatcher(dir))
		}
	}
	if len(a.Policy.Dispatch) > 0 {
		d, err := Open(s, a.NetNS, false)
		if err == nil {
			errs = append(errs, d.removeLabels(labelsOf(a)))
			d.Close()
		} else if !errors.Is(err, ErrNoDispatcher) && netnsExists(a.NetNS) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func netnsExists(path string) bool {
	_, err := netnsInode(path)
	return err == nil
}
