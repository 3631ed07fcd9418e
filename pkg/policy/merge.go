package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Layer is one source of a container's policy, named so that a conflict
// between two sources can say where each value came from ("the conf's
// policy", "runtimeConfig.portMappings").
type Layer struct {
	Source string
	Policy *Policy
}

// Merge builds one policy from layers given lowest first, the way the CNI
// plugin combines the network-wide policy, a named per-container policy and
// what the runtime and the main plugin report:
//
//   - addresses, allowedPorts, connectionLimits, groups, egress,
//     egressDefault, mark, priority and dscp: the last layer that sets
//     them wins, so a named policy can narrow the network's ports or
//     replace its egress rules; dispatch bindings likewise;
//   - portMappings accumulate; the same mapping given twice is kept once,
//     and two different mappings of one containerPort (or onto one
//     hostPort) are an error naming both sources.
//
// The result is validated. Nil layers are skipped.
func Merge(layers ...Layer) (*Policy, error) {
	type key struct {
		port  uint16
		proto Protocol
	}
	type origin struct {
		mapping PortMapping
		source  string
	}
	var out Policy
	byContainer := map[key]origin{}
	byHost := map[key]origin{}
	for _, l := range layers {
		if l.Policy == nil {
			continue
		}
		out.Published = out.Published || l.Policy.Published
		if len(l.Policy.Addresses) > 0 {
			out.Addresses = slices.Clone(l.Policy.Addresses)
		}
		if len(l.Policy.AllowedPorts) > 0 {
			out.AllowedPorts = slices.Clone(l.Policy.AllowedPorts)
		}
		mergeEgress(&out, l.Policy)
		if len(l.Policy.Dispatch) > 0 {
			out.Dispatch = slices.Clone(l.Policy.Dispatch)
		}
		if l.Policy.Mark != nil {
			out.Mark = l.Policy.Mark
		}
		if l.Policy.Priority != nil {
			out.Priority = l.Policy.Priority
		}
		if l.Policy.DSCP != nil {
			out.DSCP = l.Policy.DSCP
		}
		for _, m := range l.Policy.PortMappings {
			m.Protocol = Protocol(strings.ToLower(string(m.Protocol)))
			if m.Protocol == "" {
				m.Protocol = TCP
			}
			ck, hk := key{m.ContainerPort, m.Protocol}, key{m.HostPort, m.Protocol}
			if prev, ok := byContainer[ck]; ok {
				if prev.mapping == m {
					continue
				}
				return nil, fmt.Errorf("portMappings: containerPort %d/%s is mapped to %d by %s and to %d by %s",
					m.ContainerPort, m.Protocol, prev.mapping.HostPort, prev.source, m.HostPort, l.Source)
			}
			if prev, ok := byHost[hk]; ok {
				return nil, fmt.Errorf("portMappings: hostPort %d/%s is the target of containerPort %d in %s and of containerPort %d in %s",
					m.HostPort, m.Protocol, prev.mapping.ContainerPort, prev.source, m.ContainerPort, l.Source)
			}
			byContainer[ck] = origin{m, l.Source}
			byHost[hk] = origin{m, l.Source}
			out.PortMappings = append(out.PortMappings, m)
		}
	}
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return &out, nil
}
