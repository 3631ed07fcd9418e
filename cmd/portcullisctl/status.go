package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/limits"
	"github.com/portcullis-net/portcullis/pkg/state"
)

// statusReport is status' JSON form.
type statusReport struct {
	StateDir string `json:"stateDir"`
	Loaded   bool   `json:"loaded"`
	// Layout is what the state records; Tool is this build's.
	Layout      *state.Layout      `json:"layout,omitempty"`
	Tool        state.Layout       `json:"tool"`
	Attachments []state.Attachment `json:"attachments"`
	// Maps is what each pinned map costs; MapMemory is their sum.
	Maps      []state.MapUsage `json:"maps,omitempty"`
	MapMemory uint64           `json:"mapMemoryBytes,omitempty"`
	// Connections are the live counts of attachments with connection caps.
	Connections map[string]*limits.Usage `json:"connections,omitempty"`
}

var attachmentHeader = []string{"ID", "CGROUP OR NETNS", "ADDRESSES", "ALLOWED PORTS", "PORT MAPPINGS", "OWNER", "ATTACHED"}

func attachmentRow(a *state.Attachment) []string {
	var addrs, ports, maps []string
	for _, ad := range a.Policy.Addresses {
		addrs = append(addrs, ad.String())
	}
	for _, r := range a.Policy.AllowedPorts {
		ports = append(ports, r.String())
	}
	for _, m := range a.Policy.PortMappings {
		maps = append(maps, fmt.Sprintf("%d->%d/%s", m.ContainerPort, m.HostPort, m.Protocol))
	}
	return []string{
		a.ID, a.Target(),
		orDash(strings.Join(addrs, ",")), orDash(strings.Join(ports, ",")), orDash(strings.Join(maps, ",")),
		orDash(a.Owner), a.AttachedAt.Local().Format(time.RFC3339),
	}
}

func init() { register(newStatusCommand) }

func newStatusCommand(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status [ID]",
		Short: "Show whether portcullis is loaded, its map memory, and every attachment (or one)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			report := statusReport{StateDir: opts.stateDir, Attachments: []state.Attachment{}, Tool: toolLayout()}
			if l, err := state.ReadLayout(opts.stateDir); err == nil {
				report.Layout = &l
			}
			s, err := state.Open(opts.stateDir, false)
			var layoutErr *state.LayoutError
			switch {
			case errors.Is(err, state.ErrNotLoaded):
			case errors.As(err, &layoutErr):
				// Both layouts, then the one line saying what to do.
				if opts.output == "json" {
					render(cmd.OutOrStdout(), opts, report, nil, nil)
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), layoutLine(report.Layout))
				}
				return err
			case err != nil:
				return err
			default:
				defer s.Close()
				report.Loaded = true
				if len(args) == 1 {
					a, err := s.Get(args[0])
					if err != nil {
						return err
					}
					report.Attachments = []state.Attachment{*a}
				} else if report.Attachments, err = s.Attachments(); err != nil {
					return err
				}
				if report.Maps, err = s.MapMemory(); err != nil {
					return err
				}
				for _, m := range report.Maps {
					report.MapMemory += m.Memlock
				}
				if report.Connections, err = s.Usages(report.Attachments); err != nil {
					return err
				}
			}
			if opts.output == "json" {
				return render(cmd.OutOrStdout(), opts, report, nil, nil)
			}
			out := cmd.OutOrStdout()
			if !report.Loaded {
				fmt.Fprintf(out, "not loaded (%s)\n", report.StateDir)
				return nil
			}
			if len(args) == 0 {
				fmt.Fprintf(out, "loaded in %s, %d attachments, map memory %.1f MiB (-o json: per map)\n%s\n\n",
					report.StateDir, len(report.Attachments), float64(report.MapMemory)/(1<<20), layoutLine(report.Layout))
			}
			var rows [][]string
			for i := range report.Attachments {
				rows = append(rows, attachmentRow(&report.Attachments[i]))
			}
			if err := render(out, opts, nil, attachmentHeader, rows); err != nil {
				return err
			}
			return printConnections(out, opts, report.Connections)
		},
	}
}

// toolLayout is this build's layout.
func toolLayout() state.Layout {
	return state.Layout{Version: state.LayoutVersion, Build: state.Build()}
}

// layoutLine shows the state's layout beside this build's.
func layoutLine(l *state.Layout) string {
	t := toolLayout()
	if l == nil {
		return fmt.Sprintf("state layout unknown; this build: layout %d (%s)", t.Version, t.Build)
	}
	build := l.Build
	if build == "" {
		build = "build not recorded"
	}
	line := fmt.Sprintf("state layout %d (%s); this build: layout %d (%s)", l.Version, build, t.Version, t.Build)
	if l.Upgrading {
		line += "; an upgrade is unfinished"
	}
	return line
}
