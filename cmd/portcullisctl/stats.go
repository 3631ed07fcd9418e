package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/stats"
)

func init() { register(newStatsCommand) }

var statsHeader = []string{"ID", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES", "DECISIONS"}

func newStatsCommand(opts *options) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "stats [--id ID]",
		Short: "Show each attachment's traffic (packets, bytes) and what portcullis decided for it",
		Long: "Shows the counters the kernel programs keep per attachment: packets and bytes received (ingress)\n" +
			"and sent (egress) by its sockets, and the policy decisions (refused and remapped binds, translated\n" +
			"and refused connects, rewritten UDP sources, terminated sockets). -o json has every direction,\n" +
			"address family and protocol. See docs/metrics.md.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := state.Open(opts.stateDir, false)
			if err != nil {
				return err
			}
			defer s.Close()
			var list []stats.Attachment
			if id != "" {
				a, err := s.Get(id)
				if err != nil {
					return err
				}
				m, err := stats.Open(s.Dir())
				if err != nil {
					return err
				}
				defer m.Close()
				one, err := m.Of(a)
				if err != nil {
					return err
				}
				list = []stats.Attachment{*one}
			} else if list, err = stats.Read(s); err != nil {
				return err
			}
			var rows [][]string
			for i := range list {
				a := &list[i]
				rxp, rxb := a.Total("ingress")
				txp, txb := a.Total("egress")
				rows = append(rows, []string{a.ID, fmt.Sprint(rxp), fmt.Sprint(rxb), fmt.Sprint(txp), fmt.Sprint(txb), decisionSummary(a)})
			}
			return render(cmd.OutOrStdout(), opts, list, statsHeader, rows)
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "only this attachment")
	return cmd
}

// decisionSummary lists the reasons that happened, as reason=count.
func decisionSummary(a *stats.Attachment) string {
	var out string
	for _, r := range stats.Reasons() {
		if n := a.Decision(r); n > 0 {
			if out != "" {
				out += " "
			}
			out += fmt.Sprintf("%s=%d", r, n)
		}
	}
	return orDash(out)
}
