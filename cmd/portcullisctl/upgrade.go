package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newUpgradeCommand) }

func newUpgradeCommand(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "upgrade",
		Short: "Carry a state of an older layout to this build's, in place, with every container attached and enforced",
		Long: "Carry a state of an older layout to this build's, in place: maps whose spec is unchanged are reused,\n" +
			"the others migrated; every attachment's pinned links get the new programs with BPF_LINK_UPDATE.\n" +
			"It is idempotent, and a failure half way is resumed by running it again (docs/upgrade.md).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := state.Upgrade(opts.stateDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if opts.output == "json" {
				return render(out, opts, r, nil, nil)
			}
			if r.UpToDate {
				fmt.Fprintf(out, "%s already has layout %d (this build's)\n", r.StateDir, r.To)
				return nil
			}
			how := "upgraded"
			if r.Resumed {
				how = "finished the upgrade of"
			}
			fmt.Fprintf(out, "%s %s from layout %d to %d in %v: %d attachments, %d links updated in place, %d added, %d removed\n",
				how, r.StateDir, r.From, r.To, r.Duration.Round(1e6), r.Attachments, r.LinksUpdated, r.LinksAdded, r.LinksRemoved)
			fmt.Fprintf(out, "prepare %v, swap %v, commit %v\n", r.Prepare.Round(1e6), r.Swap.Round(1e6), r.Commit.Round(1e6))
			for _, l := range []struct {
				what  string
				names []string
			}{{"reused", r.Reused}, {"migrated", r.Migrated}, {"created", r.Created}, {"removed", r.Removed}} {
				if len(l.names) > 0 {
					fmt.Fprintf(out, "maps %s: %s\n", l.what, strings.Join(l.names, " "))
				}
			}
			return nil
		},
	}
}
