package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

func init() { register(newPolicyCommand) }

func newPolicyCommand(opts *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Change an attachment's policy in place",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newPolicySetCommand(opts))
	return cmd
}

func newPolicySetCommand(opts *options) *cobra.Command {
	var id, policyFile string
	var terminateDenied bool
	cmd := &cobra.Command{
		Use:   "set --id ID --policy FILE [--terminate]",
		Short: "Replace an attachment's policy without detaching it",
		Long: `Replace the policy of attachment ID with the one in FILE, without
detaching: every later bind, connect and send sees the new policy, and
connections already made keep going. With --terminate, the container's TCP
and connected UDP sockets whose peer the new egress rules deny are
destroyed (TCP gets ECONNABORTED), as if they had been refused at connect.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := readPolicy(policyFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			s, err := state.Open(opts.stateDir, true)
			if err != nil {
				return err
			}
			defer s.Close()
			a, err := s.SetPolicy(id, p)
			if err != nil {
				return err
			}
			if !terminateDenied {
				return render(cmd.OutOrStdout(), opts, a, attachmentHeader, [][]string{attachmentRow(a)})
			}
			report, err := terminate.Denied(s, a, false)
			if report == nil {
				return fmt.Errorf("policy of %s replaced, but terminating denied sockets failed: %w", id, err)
			}
			return printSet(cmd.OutOrStdout(), opts, a, report, err)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "attachment id (required)")
	cmd.Flags().StringVar(&policyFile, "policy", "", "the new policy JSON file (required)")
	cmd.Flags().BoolVar(&terminateDenied, "terminate", false, "destroy the sockets whose peer the new egress rules deny")
	cmd.MarkFlagRequired("id")
	cmd.MarkFlagRequired("policy")
	return cmd
}

// printSet shows the attachment, then what was terminated.
func printSet(w io.Writer, opts *options, a *state.Attachment, r *terminate.Report, termErr error) error {
	if opts.output == "json" {
		if err := render(w, opts, struct {
			Attachment *state.Attachment `json:"attachment"`
			Terminated *terminate.Report `json:"terminated"`
		}{a, r}, nil, nil); err != nil {
			return err
		}
		return termErr
	}
	if err := render(w, opts, nil, attachmentHeader, [][]string{attachmentRow(a)}); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := printReport(w, opts, r); err != nil {
		return err
	}
	return termErr
}
