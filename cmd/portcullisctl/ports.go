package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newPortsCommand) }

// portRow is one line of ports' JSON form.
type portRow struct {
	Attachment string `json:"attachment"`
	services.Listener
}

var portsHeader = []string{"ATTACHMENT", "PROTO", "ADDRESS", "COOKIE", "BOUND"}

func newPortsCommand(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "ports",
		Short: "List the listening TCP and bound UDP sockets of attached containers (the port registry)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withServices(opts, false, func(s *state.State, m *services.Maps, _ []services.Provider) error {
				list, err := m.Registry()
				if err != nil {
					return err
				}
				ids, err := attachmentIDs(s)
				if err != nil {
					return err
				}
				out := []portRow{}
				var rows [][]string
				for _, l := range list {
					r := portRow{Attachment: ids[l.CgroupID], Listener: l}
					out = append(out, r)
					rows = append(rows, []string{orDash(r.Attachment), string(l.Protocol), l.Address.String(), fmt.Sprint(l.Cookie), l.BoundAt.Local().Format(time.RFC3339)})
				}
				if err := render(cmd.OutOrStdout(), opts, out, portsHeader, rows); err != nil {
					return err
				}
				return warnDrops(cmd, m)
			})
		},
	}
}
