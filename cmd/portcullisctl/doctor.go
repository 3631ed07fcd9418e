package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/kernel"
	"github.com/portcullis-net/portcullis/pkg/state"
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
			if opts.output != "json" {
				printMapMemory(cmd.OutOrStdout(), opts.stateDir)
			}
			if missing := kernel.Missing(features); len(missing) > 0 {
				return fmt.Errorf("%d required kernel features are missing (first: %s)", len(missing), missing[0].Name)
			}
			return nil
		},
	}
}

// printMapMemory says what the loaded state's maps cost, if one is loaded.
func printMapMemory(w io.Writer, dir string) {
	l, err := state.ReadLayout(dir)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "\n%s\n", layoutLine(&l))
	s, err := state.Open(dir, false)
	if err != nil {
		fmt.Fprintf(w, "state %s: %v\n", dir, err)
		return
	}
	defer s.Close()
	maps, err := s.MapMemory()
	if err != nil {
		fmt.Fprintf(w, "\nstate %s: map memory unknown: %v\n", dir, err)
		return
	}
	var sum uint64
	for _, m := range maps {
		sum += m.Memlock
	}
	fmt.Fprintf(w, "state %s: %d maps, %.1f MiB (portcullisctl status -o json: per map)\n", dir, len(maps), float64(sum)/(1<<20))
}
