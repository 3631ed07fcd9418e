package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newUnloadCommand) }

func newUnloadCommand(opts *options) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "unload",
		Short: "Remove the pinned programs and maps; refuses while attachments exist unless --force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := state.Unload(opts.stateDir, force); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unloaded %s\n", opts.stateDir)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "detach every attachment first")
	return cmd
}
