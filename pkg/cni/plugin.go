// Package cni is the logic of the chained CNI plugin `portcullis`: it runs
// after a main plugin (bridge, ptp, macvlan...) and attaches the container's
// policy through the same state as `portcullisctl attach`. A container is
// named the way CNI names it, by its network namespace: the policy covers
// every task in CNI_NETNS whatever its cgroup (a pod's pause and app
// containers, one exec'd in), and ADD needs no process (runtimes call it
// before the sandbox starts).
//
//	ADD     build the policy (conf, prevResult.ips, portMappings, CNI_ARGS),
//	        key it by CNI_NETNS, attach; pass prevResult through
//	DEL     detach; whatever is already gone is not an error
//	CHECK   the links are pinned, on the right cgroup, with the conf's policy
//	GC      detach what the runtime no longer lists, and dead cgroups
//	STATUS  kernel features and bpffs
//
// Errors are *types.Error, which Main prints as the spec's error JSON
// (cniVersion, code, msg) on stdout; diagnostics go only to the conf's
// logFile.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/portcullis-net/portcullis/pkg/hostaddr"
	"github.com/portcullis-net/portcullis/pkg/kernel"
	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

// Error codes of the plugin's own (the spec leaves 100 and up to plugins).
const (
	// ErrAttachFailed: the state could not be loaded, or the kernel or the
	// state refused the attachment (an address not in the container's
	// namespace, a full map...).
	ErrAttachFailed uint = 101
	// ErrCheckFailed: CHECK found the attachment missing or different from
	// what the conf gives.
	ErrCheckFailed uint = 102
)

// VersionInfo lists the spec versions the plugin speaks: from 0.3.0, the
// first with chained plugins and prevResult, to 1.1.0 (GC and STATUS).
var VersionInfo = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the plugin is run without CNI_COMMAND.
const About = "CNI plugin portcullis: pins a container's sockets to its addresses and ports with eBPF (chained; see docs/cni.md)"

// Funcs are the plugin's verbs for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return run("ADD", a, add) },
		Del:    func(a *skel.CmdArgs) error { return run("DEL", a, del) },
		Check:  func(a *skel.CmdArgs) error { return run("CHECK", a, check) },
		GC:     func(a *skel.CmdArgs) error { return run("GC", a, gc) },
		Status: func(a *skel.CmdArgs) error { return run("STATUS", a, status) },
	}
}

// invocation is one run of the plugin.
type invocation struct {
	args *skel.CmdArgs
	conf *Conf
	log  *logger
}

// run parses the conf, opens the log and logs the outcome of fn.
func run(cmd string, args *skel.CmdArgs, fn func(*invocation) error) error {
	start := time.Now()
	prefix := cmd
	if args.ContainerID != "" {
		prefix += fmt.Sprintf(" container=%s ifname=%s", args.ContainerID, args.IfName)
	}
	conf, err := ParseConf(args.StdinData, args.Args)
	if err != nil {
		// The conf is unusable, but its logFile may still be readable.
		if l, lerr := openLog(logFileOf(args.StdinData), prefix); lerr == nil {
			l.printf("error: %s", errorText(err))
			l.close()
		}
		return err
	}
	l, err := openLog(conf.LogFile, prefix+" network="+conf.Name)
	if err != nil && (cmd == "ADD" || cmd == "CHECK") {
		// DEL, GC and STATUS still do their job: a broken log must
		// never keep a runtime from cleaning up.
		return invalidConf("%v: fix logFile in the conf or create its folder", err)
	}
	defer l.close()
	err = fn(&invocation{args: args, conf: conf, log: l})
	if err != nil {
		l.printf("error after %v: %s", time.Since(start).Round(time.Microsecond), errorText(err))
		return err
	}
	l.printf("ok in %v", time.Since(start).Round(time.Microsecond))
	return nil
}

// add attaches the container. It is all or nothing: everything that can be
// checked without the state is checked before the state is opened (so bad
// input never even loads it), and after that each step that changes the
// state pushes its undo, which every later failure runs, newest first.
func add(inv *invocation) (err error) {
	c, args := inv.conf, inv.args
	prev, err := c.ParsePrevResult()
	if err != nil {
		return err
	}
	p, err := c.ContainerPolicy(prev, args.IfName)
	if err != nil {
		return err
	}
	if err := notPluginNetNS(args); err != nil {
		return err
	}
	key, err := netnsKey(args.Netns)
	if err != nil {
		return err
	}
	if err := hostaddr.CheckLocal(args.Netns, p.Addresses); err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	id := AttachmentID(args.ContainerID, args.IfName)

	s, err := state.OpenOrLoad(c.StateDir)
	if err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	defer s.Close()
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				inv.log.printf("undo after a failed ADD: %v", uerr)
			}
		}
	}()
	restore, err := applyServices(s, c.Services)
	if err != nil {
		return types.NewError(ErrAttachFailed, "services: "+err.Error(), "")
	}
	undo = append(undo, restore)
	if old, err := s.Get(id); err == nil {
		if !strings.HasPrefix(old.Owner, OwnerPrefix) {
			return types.NewError(ErrAttachFailed, fmt.Sprintf("attachment %s already exists and was made by %s, not by the CNI plugin: detach it (portcullisctl detach --id %s)", id, old.Owner, id), "")
		}
		if old.CgroupID == key && old.NetNS == args.Netns {
			// The same container again (a repeated ADD, or a conf
			// changed under it): its policy is replaced in place, so
			// its connections and counts carry on. A failure after
			// that puts the old policy back.
			a, err := s.SetPolicy(id, p)
			if err != nil {
				return types.NewError(ErrAttachFailed, "replace the policy of "+id+": "+err.Error(), "")
			}
			undo = append(undo, func() error {
				_, err := s.SetPolicy(id, &old.Policy)
				return err
			})
			policyJSON, _ := json.Marshal(a.Policy)
			inv.log.printf("replaced the policy of %s in place: %s", id, policyJSON)
			return printResult(c)
		}
		// The runtime repeats an ADD it thinks failed: the new one
		// replaces the old.
		inv.log.printf("replacing existing attachment %s (netns %s)", id, old.NetNS)
		if err := s.Detach(id); err != nil {
			return types.NewError(ErrAttachFailed, "replace attachment "+id+": "+err.Error(), "")
		}
		undo = append(undo, func() error {
			_, err := s.Attach(state.AttachRequest{ID: old.ID, Cgroup: old.CgroupPath, Policy: &old.Policy, NetNS: old.NetNS, Owner: old.Owner,
				KeyByNetNS: old.KeyedByNetNS(), NetNSCgroup: c.NetNSCgroup})
			return err
		})
	}
	a, err := s.Attach(state.AttachRequest{ID: id, Policy: p, NetNS: args.Netns, Owner: Owner(c.Name),
		KeyByNetNS: true, NetNSCgroup: c.NetNSCgroup, AddressesChecked: true})
	if err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	undo = append(undo, func() error { return s.Detach(id) })
	policyJSON, _ := json.Marshal(a.Policy)
	inv.log.printf("attached %s to network namespace %s (key %#x) policy %s", id, a.NetNS, a.CgroupID, policyJSON)

	return printResult(c)
}

// printResult prints the main plugin's result, unchanged.
func printResult(c *Conf) error {
	if err := types.PrintResult(c.PrevResult, c.CNIVersion); err != nil {
		return types.NewError(types.ErrIOFailure, "write result: "+err.Error(), "")
	}
	return nil
}

// applyServices puts the conf's services and returns how to put them back
// as they were. A failure part way restores them at once.
func applyServices(s *state.State, decls []services.Declaration) (restore func() error, err error) {
	if len(decls) == 0 {
		return func() error { return nil }, nil
	}
	var names []string
	for _, d := range decls {
		names = append(names, d.Name)
	}
	var saved *services.Saved
	err = s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		var err error
		if saved, err = m.Save(names); err != nil {
			return err
		}
		if err := m.Apply(decls, providers); err != nil {
			return errors.Join(err, m.Restore(saved, providers))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() error {
		return s.WithServices(func(m *services.Maps, providers []services.Provider) error {
			return m.Restore(saved, providers)
		})
	}, nil
}

func del(inv *invocation) error {
	c, args := inv.conf, inv.args
	id := AttachmentID(args.ContainerID, args.IfName)
	s, err := state.Open(c.StateDir, true)
	if errors.Is(err, state.ErrNotLoaded) {
		inv.log.printf("nothing to do: no state in %s", c.StateDir)
		return nil
	} else if err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	defer s.Close()
	a, err := s.Get(id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		// Detach also removes a link folder a crash left without its
		// record.
		if err := s.Detach(id); err != nil && !errors.Is(err, state.ErrNotFound) {
			return types.NewError(ErrAttachFailed, err.Error(), "")
		}
		inv.log.printf("nothing to do: %s is not attached", id)
		return nil
	case err != nil:
		return types.NewError(ErrAttachFailed, err.Error(), "")
	case !strings.HasPrefix(a.Owner, OwnerPrefix):
		inv.log.printf("left %s alone: it was attached by %s", id, a.Owner)
		return nil
	}
	// The container's clients lose their sockets to it too; a failure
	// there is logged and never fails DEL.
	var warning strings.Builder
	report, err := terminate.Detach(s, id, &warning)
	if err != nil {
		return types.NewError(ErrAttachFailed, "detach "+id+": "+err.Error(), "")
	}
	inv.log.printf("detached %s from network namespace %s", id, a.NetNS)
	if warning.Len() > 0 {
		inv.log.printf("%s", warning.String())
	}
	if report != nil && report.Destroyed > 0 {
		inv.log.printf("terminated %d sockets connected to %s", report.Destroyed, id)
	}
	return nil
}

func check(inv *invocation) error {
	c, args := inv.conf, inv.args
	prev, err := c.ParsePrevResult()
	if err != nil {
		return err
	}
	want, err := c.ContainerPolicy(prev, args.IfName)
	if err != nil {
		return err
	}
	key, err := netnsKey(args.Netns)
	if err != nil {
		return err
	}
	id := AttachmentID(args.ContainerID, args.IfName)
	fail := func(format string, a ...any) error {
		return types.NewError(ErrCheckFailed, fmt.Sprintf(format, a...), "")
	}
	s, err := state.Open(c.StateDir, false)
	if errors.Is(err, state.ErrNotLoaded) {
		return fail("container %s is not attached: no portcullis state in %s (run DEL and ADD again)", args.ContainerID, c.StateDir)
	} else if err != nil {
		return fail("%v", err)
	}
	defer s.Close()
	a, err := s.Get(id)
	if errors.Is(err, state.ErrNotFound) {
		return fail("container %s interface %s is not attached (no attachment %s; run DEL and ADD again)", args.ContainerID, args.IfName, id)
	} else if err != nil {
		return fail("%v", err)
	}
	if a.CgroupID != key {
		return fail("attachment %s is not keyed by network namespace %s (it follows %s): run DEL and ADD again", id, args.Netns, a.Target())
	}
	if err := s.VerifyLinks(a); err != nil {
		return fail("%v: run DEL and ADD again", err)
	}
	if have, wantJSON := policyJSON(&a.Policy), policyJSON(want); have != wantJSON {
		return fail("attachment %s has policy %s, but the conf now gives %s: run DEL and ADD again", id, have, wantJSON)
	}
	return nil
}

func policyJSON(p *policy.Policy) string {
	data, _ := json.Marshal(p)
	return string(data)
}

func gc(inv *invocation) error {
	c := inv.conf
	valid := map[string]bool{}
	for _, va := range c.ValidAttachments {
		valid[AttachmentID(va.ContainerID, va.IfName)] = true
	}
	s, err := state.Open(c.StateDir, true)
	if errors.Is(err, state.ErrNotLoaded) {
		return nil
	} else if err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	defer s.Close()
	list, err := s.Attachments()
	if err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	var errs []error
	for _, a := range list {
		var reason string
		switch {
		case !strings.HasPrefix(a.Owner, OwnerPrefix):
			continue // portcullisctl's or the OCI hook's
		case a.KeyedByNetNS() && !a.NetNSAlive():
			reason = "its network namespace " + a.NetNS + " no longer exists"
		case !a.KeyedByNetNS() && !a.Cgroup().Exists():
			reason = "its cgroup " + a.CgroupPath + " no longer exists"
		case a.Owner == Owner(c.Name) && !valid[a.ID]:
			reason = "it is not in cni.dev/valid-attachments"
		default:
			continue
		}
		if err := s.Detach(a.ID); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", a.ID, err))
			continue
		}
		inv.log.printf("removed %s (%s): %s", a.ID, a.Owner, reason)
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(ErrAttachFailed, err.Error(), "")
	}
	return nil
}

func status(inv *invocation) error {
	if reason := notReady(inv.conf.StateDir); reason != "" {
		return types.NewError(types.ErrPluginNotAvailable, "portcullis is not ready: "+reason, "")
	}
	return nil
}

// notReady says why ADD could not work now, or "" when it could.
func notReady(dir string) string {
	if err := kernel.Require(dir); err != nil {
		return err.Error() + " (portcullisctl doctor checks each feature)"
	}
	// ParseConf checked the directory; the first ADD loads the state
	// when there is none yet.
	s, err := state.Open(dir, false)
	if errors.Is(err, state.ErrNotLoaded) {
		return ""
	} else if err != nil {
		return fmt.Sprintf("the state pinned in %s cannot be opened: %v", dir, err)
	}
	s.Close()
	return ""
}

// netnsKey is the policy key of the container's network namespace.
func netnsKey(path string) (uint64, error) {
	cookie, err := state.NetNSCookie(path)
	if err != nil {
		return 0, types.NewError(types.ErrInvalidNetNS, "CNI_NETNS: "+err.Error(), "")
	}
	return state.NetNSKey | cookie, nil
}

// notPluginNetNS refuses a CNI_NETNS that is the plugin's own namespace
// before anything is attached (skel checks only after ADD returns).
func notPluginNetNS(args *skel.CmdArgs) error {
	if o := strings.ToLower(args.NetnsOverride); o == "1" || o == "true" {
		return nil
	}
	var theirs, ours unix.Stat_t
	if unix.Stat(args.Netns, &theirs) != nil || unix.Stat("/proc/thread-self/ns/net", &ours) != nil {
		return nil // the cgroup lookup reports a missing netns
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS "+args.Netns+" is the plugin's own network namespace: the container needs a namespace of its own", "")
	}
	return nil
}

// logFileOf reads only the logFile of a conf that failed to parse.
func logFileOf(stdin []byte) string {
	var c struct {
		LogFile string `json:"logFile"`
	}
	json.Unmarshal(stdin, &c)
	return c.LogFile
}

func errorText(err error) string {
	var e *types.Error
	if errors.As(err, &e) {
		return fmt.Sprintf("code %d: %s", e.Code, e.Msg)
	}
	return err.Error()
}
