// Command portcullisctl inspects and changes portcullis' pinned state:
// load and unload the programs, attach a policy to any cgroup, show what is
// attached, and check the kernel.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
)

// options are the flags every verb shares.
type options struct {
	stateDir string
	output   string
}

func newRootCommand() *cobra.Command {
	opts := &options{}
	root := &cobra.Command{
		Use:           "portcullisctl",
		Short:         "Inspect and change portcullis' socket-layer container networking",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if opts.output != "table" && opts.output != "json" {
				return fmt.Errorf("--output must be table or json, not %q", opts.output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&opts.stateDir, "state-dir", state.Dir(), "bpffs directory of the pinned state ($PORTCULLIS_STATE_DIR)")
	root.PersistentFlags().StringVarP(&opts.output, "output", "o", "table", "output format: table or json")
	for _, newCommand := range verbs {
		root.AddCommand(newCommand(opts))
	}
	return root
}

// verbs holds each verb's constructor; every verb's file registers itself
// in init, so adding a verb touches only its own file.
var verbs []func(*options) *cobra.Command

func register(newCommand func(*options) *cobra.Command) {
	verbs = append(verbs, newCommand)
}

func main() {
	if err := newRootCommand().Execute(); err != nil {
		// One line, whatever the error (cobra's suggestions have several).
		fmt.Fprintln(os.Stderr, "portcullisctl:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}
