package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newLoadCommand) }

func newLoadCommand(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "load",
		Short: "Load and pin the programs and maps (attach does this on first use)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			loaded, err := state.Load(opts.stateDir)
			if err != nil {
				return err
			}
			if loaded {
				fmt.Fprintf(cmd.OutOrStdout(), "loaded into %s\n", opts.stateDir)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "already loaded in %s\n", opts.stateDir)
			}
			return nil
		},
	}
}
