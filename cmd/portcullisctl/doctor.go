package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/kernel"
)

func init() { register(newDoctorCommand) }

func newDoctorCommand(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check every kernel feature portcullis uses; non-zero exit if a required one is missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			features := kernel.Check(opts.stateDir)
			var rows [][]string
			for _, f := range features {
				status := "ok"
				if !f.OK {
					status = "MISSING"
				}
				required := "optional"
				if f.Required {
					required = "required"
				}
				rows = append(rows, []string{f.Name, status, required, orDash(f.Detail)})
			}
			if err := render(cmd.OutOrStdout(), opts, features, []string{"FEATURE", "STATUS", "NEED", "DETAIL"}, rows); err != nil {
				return err
			}
			if missing := kernel.Missing(features); len(missing) > 0 {
				return fmt.Errorf("%d required kernel features are missing (first: %s)", len(missing), missing[0].Name)
			}
			return nil
		},
	}
}
