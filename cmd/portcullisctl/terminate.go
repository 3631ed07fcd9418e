package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/terminate"
)

func init() { register(newTerminateCommand) }

func newTerminateCommand(opts *options) *cobra.Command {
	var backend, protocol string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "terminate --backend ADDR:PORT [--protocol tcp|udp] [--dry-run]",
		Short: "Destroy attached containers' sockets connected to a backend (TCP and connected UDP)",
		Long: `Destroy every TCP socket (established or connecting) and every connected
UDP socket of an attached container whose peer is the backend, in the host
network namespace and in each namespace that holds attached containers.
TCP clients get ECONNABORTED; a connected UDP client's next call fails.
Host processes' sockets are never touched. --dry-run lists and changes
nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ap, err := netip.ParseAddrPort(backend)
			if err != nil {
				return fmt.Errorf("--backend %q: want ADDR:PORT ([ADDR]:PORT for IPv6): %v", backend, err)
			}
			if ap.Port() == 0 {
				return fmt.Errorf("--backend %q: the port must not be 0", backend)
			}
			if protocol != "" && protocol != "tcp" && protocol != "udp" {
				return fmt.Errorf("--protocol must be tcp or udp, not %q", protocol)
			}
			report, err := terminate.Backend(opts.stateDir, ap, protocol, dryRun)
			if report == nil {
				return err
			}
			if rerr := printReport(cmd.OutOrStdout(), opts, report); rerr != nil {
				return rerr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&backend, "backend", "", "backend address and port, e.g. 10.0.0.5:80 or [fd00::5]:53")
	cmd.Flags().StringVar(&protocol, "protocol", "", "tcp or udp (default both)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the sockets that would be destroyed, change nothing")
	cmd.MarkFlagRequired("backend")
	return cmd
}

// printReport writes the sockets (in a dry run, or when some failed) and
// then one count line per namespace; JSON is the whole report.
func printReport(w io.Writer, opts *options, r *terminate.Report) error {
	if opts.output != "json" {
		var listed [][]string
		for _, n := range r.Namespaces {
			for _, s := range n.Sockets {
				if r.DryRun || s.Error != "" {
					listed = append(listed, []string{n.NetNS, s.Protocol, s.State, s.Local, s.Peer, fmt.Sprint(s.CgroupID), orDash(s.Error)})
				}
			}
		}
		if len(listed) > 0 {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NETNS\tPROTO\tSTATE\tLOCAL\tPEER\tCGROUP\tERROR")
			for _, row := range listed {
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
			tw.Flush()
			fmt.Fprintln(w)
		}
	}
	var rows [][]string
	for _, n := range r.Namespaces {
		destroyed := fmt.Sprint(n.Destroyed)
		if r.DryRun {
			destroyed = "- (dry run)"
		}
		rows = append(rows, []string{n.NetNS, fmt.Sprint(n.Scanned), fmt.Sprint(n.Matched), destroyed, orDash(n.Error)})
	}
	return render(w, opts, r, []string{"NETNS", "SCANNED", "MATCHED", "DESTROYED", "ERROR"}, rows)
}
