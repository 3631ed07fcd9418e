package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newLoadCommand) }

func newLoadCommand(opts *options) *cobra.Command {
	var sizes state.Sizes
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Load and pin the programs and maps (attach does this on first use)",
		Long: "Load and pin the programs and maps (attach does this on first use).\n" +
			"The --max-* flags size the maps (0: the default); docs/scale.md says what each costs.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			loaded, err := state.LoadSized(opts.stateDir, sizes)
			if err != nil {
				return err
			}
			if loaded {
				fmt.Fprintf(cmd.OutOrStdout(), "loaded into %s\n", opts.stateDir)
			} else if sizes != (state.Sizes{}) {
				return fmt.Errorf("already loaded in %s with its own map sizes: unload it first (portcullisctl unload) to load with --max-*", opts.stateDir)
			} else {
				// A state of another layout is not this build's to use.
				if l, err := state.ReadLayout(opts.stateDir); err == nil && (l.Version != state.LayoutVersion || l.Upgrading) {
					return &state.LayoutError{Dir: opts.stateDir, State: l}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "already loaded in %s\n", opts.stateDir)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&sizes.Containers, "max-containers", 0, "attachments and port mapping entries (default 65536)")
	f.Uint32Var(&sizes.Backends, "max-backends", 0, "service backend slots (default 131072)")
	f.Uint32Var(&sizes.Frontends, "max-frontends", 0, "service frontend addresses (default 65536)")
	f.Uint32Var(&sizes.Sockets, "max-sockets", 0, "bound sockets of attached containers, the port registry (default 131072)")
	f.Uint32Var(&sizes.Peers, "max-peers", 0, "sockets connected through a service frontend, preallocated (default 32768)")
	return cmd
}
