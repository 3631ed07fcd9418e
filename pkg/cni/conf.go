package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/portcullis-net/portcullis/pkg/policy"
	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// Conf is the plugin's configuration: the standard CNI keys plus
// portcullis' own.
type Conf struct {
	types.PluginConf

	// Policy applies to every container on the network.
	Policy *policy.Policy `json:"-"`
	// Policies are named per-container policies, selected with the CNI
	// argument PORTCULLIS_POLICY=name.
	Policies map[string]*policy.Policy `json:"-"`
	// Services are declared for the whole network (the same shape as
	// services.d files) and applied at every ADD; applying is idempotent.
	Services []services.Declaration `json:"-"`
	// StateDir is the pinned state; empty means state.Dir().
	StateDir string `json:"stateDir,omitempty"`
	// LogFile receives one line per invocation; empty means no log.
	LogFile string `json:"logFile,omitempty"`
	// NetNSCgroup is the cgroup the namespace programs are attached to, a
	// common ancestor of every container's cgroup; empty is the cgroup v2
	// root.
	NetNSCgroup string `json:"netnsCgroup,omitempty"`

	RuntimeConfig RuntimeConfig `json:"-"`

	// CNI_ARGS, parsed.
	PolicyName string `json:"-"`
}

// RuntimeConfig holds the capabilities portcullis declares.
type RuntimeConfig struct {
	// PortMappings is the standard portMappings capability.
	PortMappings []policy.PortMapping `json:"portMappings,omitempty"`
	// CgroupPath is the cgroupPath capability. It is accepted and not
	// needed: a container is named by its network namespace.
	CgroupPath string `json:"cgroupPath,omitempty"`
}

// knownKeys are the top-level keys a portcullis conf may have: the ones
// the CNI spec defines for every plugin, the ones runtimes inject, and
// portcullis' own. Anything else is a typo the user should hear about.
var knownKeys = map[string]bool{
	"cniVersion": true, "name": true, "type": true, "capabilities": true,
	"ipam": true, "dns": true, "args": true, "runtimeConfig": true,
	"prevResult": true, "cni.dev/valid-attachments": true, "cni.dev/attachments": true,
	"policy": true, "policies": true, "services": true, "stateDir": true, "logFile": true,
	"netnsCgroup": true,
}

// ParseConf reads the conf from stdin and the CNI arguments. Errors are
// *types.Error with the code the spec gives each kind of problem.
func ParseConf(stdin []byte, cniArgs string) (*Conf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the network configuration is not valid JSON: "+err.Error(), "")
	}
	var unknown []string
	for k := range raw {
		if !knownKeys[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		k := unknown[0]
		return nil, types.NewError(types.ErrUnsupportedField,
			fmt.Sprintf("unknown field %q (value %s) in the portcullis conf: remove it or fix its spelling (portcullis' own fields are policy, policies, services, stateDir, logFile, netnsCgroup)", k, compact(raw[k])), "")
	}

	var c Conf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "invalid portcullis conf: "+describe(err), "")
	}
	where := "stateDir"
	if c.StateDir == "" {
		c.StateDir, where = state.Dir(), "PORTCULLIS_STATE_DIR"
	}
	dir, err := state.CheckDir(c.StateDir)
	if err != nil {
		return nil, invalidConf("%s: %v", where, err)
	}
	c.StateDir = dir
	if data, ok := raw["policy"]; ok && !isNull(data) {
		p, err := policy.Parse(data)
		if err != nil {
			return nil, invalidConf("policy: %v", err)
		}
		c.Policy = p
	}
	if data, ok := raw["policies"]; ok && !isNull(data) {
		var named map[string]json.RawMessage
		if err := json.Unmarshal(data, &named); err != nil {
			return nil, invalidConf("policies: must be an object of policy name to policy: %v", describe(err))
		}
		c.Policies = map[string]*policy.Policy{}
		for name, doc := range named {
			p, err := policy.Parse(doc)
			if err != nil {
				return nil, invalidConf("policies.%s: %v", name, err)
			}
			c.Policies[name] = p
		}
	}
	if data, ok := raw["services"]; ok && !isNull(data) {
		decls, err := services.ParseDeclarations(data)
		if err != nil {
			return nil, invalidConf("services: %v", err)
		}
		c.Services = decls
	}
	for where, p := range c.confPolicies() {
		if len(p.Addresses) > 0 {
			return nil, invalidConf("%s.addresses: a container's addresses come from the main plugin's result (prevResult.ips); remove \"addresses\" from the conf", where)
		}
	}
	if data, ok := raw["runtimeConfig"]; ok && !isNull(data) {
		// The runtime writes runtimeConfig, not the user, and passes only
		// the capabilities the conf declares: unknown keys are ignored.
		if err := json.Unmarshal(data, &c.RuntimeConfig); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "runtimeConfig from the runtime: "+describe(err), "")
		}
	}
	if data, ok := raw["cni.dev/attachments"]; ok && c.ValidAttachments == nil {
		// Runtimes that followed the spec's first wording send this key.
		if err := json.Unmarshal(data, &c.ValidAttachments); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "cni.dev/attachments: "+describe(err), "")
		}
	}
	if err := c.parseArgs(cniArgs); err != nil {
		return nil, err
	}
	return &c, nil
}

// confPolicies lists the policies written in the conf, by field name.
func (c *Conf) confPolicies() map[string]*policy.Policy {
	all := map[string]*policy.Policy{}
	if c.Policy != nil {
		all["policy"] = c.Policy
	}
	for name, p := range c.Policies {
		all["policies."+name] = p
	}
	return all
}

// ArgPolicy is the CNI argument that selects a named policy.
const ArgPolicy = "PORTCULLIS_POLICY"

// policyArgs is CNI_ARGS as types.LoadArgs reads it; IgnoreUnknown=1 lets
// runtimes pass arguments meant for other plugins (K8S_POD_NAME...).
type policyArgs struct {
	types.CommonArgs
	PORTCULLIS_POLICY types.UnmarshallableString //nolint:revive // the argument's name
}

func (c *Conf) parseArgs(cniArgs string) error {
	if cniArgs == "" {
		return nil
	}
	var args policyArgs
	if err := types.LoadArgs(cniArgs, &args); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_ARGS %q: %v (portcullis reads %s=name; add IgnoreUnknown=1 to pass arguments for other plugins)", cniArgs, err, ArgPolicy), "")
	}
	c.PolicyName = string(args.PORTCULLIS_POLICY)
	return nil
}

// ContainerPolicy builds the policy of one container: the network's policy,
// then the named policy CNI_ARGS selects, then the container's addresses
// from prevResult and the runtime's port mappings.
func (c *Conf) ContainerPolicy(prev *current.Result, ifName string) (*policy.Policy, error) {
	// The container has a namespace of its own: its mappings publish
	// host ports, and a hostIP is a host address.
	layers := []policy.Layer{{Source: "publishing", Policy: &policy.Policy{Published: true}}, {Source: "the conf's policy", Policy: c.Policy}}
	if c.PolicyName != "" {
		p, ok := c.Policies[c.PolicyName]
		if !ok {
			return nil, invalidConf("CNI_ARGS %s=%s: the conf has no such policy under \"policies\" (it has: %s)",
				ArgPolicy, c.PolicyName, c.policyNames())
		}
		layers = append(layers, policy.Layer{Source: "policies." + c.PolicyName, Policy: p})
	}
	addrs := ContainerAddresses(prev, ifName)
	layers = append(layers,
		policy.Layer{Source: "prevResult.ips", Policy: &policy.Policy{Addresses: addrs}},
		policy.Layer{Source: "runtimeConfig.portMappings", Policy: &policy.Policy{PortMappings: c.RuntimeConfig.PortMappings}},
	)
	p, err := policy.Merge(layers...)
	if err != nil {
		return nil, invalidConf("the container's policy: %v", err)
	}
	return p, nil
}

func (c *Conf) policyNames() string {
	var names []string
	for name := range c.Policies {
		names = append(names, name)
	}
	if len(names) == 0 {
		return "none"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// ParsePrevResult parses prevResult into the current result version. It fails
// when there is none: portcullis only ever runs chained.
func (c *Conf) ParsePrevResult() (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, invalidConf("no prevResult: portcullis is a chained plugin; list it after the main plugin (bridge, ptp, macvlan...) in the \"plugins\" of a conflist")
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	res, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	return res, nil
}

// ContainerAddresses picks the container's addresses from a result: the
// first IPv4 and the first IPv6 address of the interface named ifName in
// the container's namespace, or of any interface when the result does not
// say which interface an address belongs to.
func ContainerAddresses(res *current.Result, ifName string) []netip.Addr {
	onContainerIface := func(ip *current.IPConfig) bool {
		if ip.Interface == nil {
			return true
		}
		i := *ip.Interface
		if i < 0 || i >= len(res.Interfaces) {
			return false
		}
		iface := res.Interfaces[i]
		return iface.Sandbox != "" && (iface.Name == ifName || ifName == "")
	}
	var v4, v6 netip.Addr
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok || !onContainerIface(ip) {
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid() && !a.IsLinkLocalUnicast():
			v6 = a
		}
	}
	var out []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

func invalidConf(format string, args ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
}

func isNull(data json.RawMessage) bool {
	return string(bytes.TrimSpace(data)) == "null"
}

func compact(data json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, data) != nil {
		return string(data)
	}
	s := b.String()
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// describe turns encoding/json's errors into ones that name the field.
func describe(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			field = "the conf"
		}
		return fmt.Sprintf("%s: expected %s, got JSON %s", field, typeErr.Type, typeErr.Value)
	}
	return err.Error()
}
