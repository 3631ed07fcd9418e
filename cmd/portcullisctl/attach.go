package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/packetcaps"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newAttachCommand) }

func newAttachCommand(opts *options) *cobra.Command {
	var cgroupPath, policyFile, id, netns string
	cmd := &cobra.Command{
		Use:   "attach --cgroup PATH --policy FILE [--id ID]",
		Short: "Attach a policy to a cgroup (a container, a systemd unit, a batch job)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := readPolicy(policyFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			// The cgroup is checked before anything is loaded, and
			// the root refused before its name becomes an id.
			cg, err := cgroup.Resolve(cgroupPath)
			if err != nil {
				return err
			}
			if err := cgroup.RefuseRoot(cg); err != nil {
				return err
			}
			if id == "" {
				id = defaultID(cg.Path)
			}
			s, err := state.OpenOrLoad(opts.stateDir)
			if err != nil {
				return err
			}
			defer s.Close()
			a, err := s.Attach(state.AttachRequest{ID: id, Cgroup: cgroupPath, Policy: p, NetNS: netns, Owner: "portcullisctl"})
			if err != nil {
				return err
			}
			// Packet sockets pass no hook: say so for the processes
			// there already (a warning: the cgroup may be empty, and a
			// later process may have dropped the capability).
			if packetcaps.Applies(p) {
				if pids, err := packetcaps.RawCapable(cg.Path); err == nil && len(pids) > 0 {
					fmt.Fprintln(cmd.ErrOrStderr(), "portcullisctl: "+packetcaps.Warning(cg.Path, pids))
				}
			}
			return render(cmd.OutOrStdout(), opts, a, attachmentHeader, [][]string{attachmentRow(a)})
		},
	}
	cmd.Flags().StringVar(&cgroupPath, "cgroup", "", "cgroup v2 path, absolute or relative to the cgroup v2 mount (required)")
	cmd.Flags().StringVar(&policyFile, "policy", "", "policy JSON file, or - for stdin (required)")
	cmd.Flags().StringVar(&id, "id", "", "attachment id (default: the cgroup's base name)")
	cmd.Flags().StringVar(&netns, "netns", "", "network namespace whose addresses the policy uses (default: the host's)")
	cmd.MarkFlagRequired("cgroup")
	cmd.MarkFlagRequired("policy")
	return cmd
}

// defaultID names an attachment after its cgroup's directory.
func defaultID(cgroupPath string) string {
	return filepath.Base(filepath.Clean(cgroupPath))
}
