package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/dispatch"
	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { register(newDispatchCommand) }

func newDispatchCommand(opts *options) *cobra.Command {
	var netns string
	cmd := &cobra.Command{
		Use:   "dispatch",
		Short: "Socket dispatch with sk_lookup: one socket serves a prefix and any ports",
		Long: `Bindings send incoming TCP connections or UDP datagrams for a prefix and
a port range to the socket registered under a label, in one network
namespace (the host's, or --netns). The most specific binding wins: the
longest prefix, then the fewest ports. A binding whose label has no socket
refuses its traffic. See docs/dispatch.md.`,
	}
	cmd.PersistentFlags().StringVar(&netns, "netns", "", "network namespace path (default: the host's)")

	// change opens the state for writing and the namespace's dispatcher,
	// building it on first use.
	change := func(f func(d *dispatch.Dispatcher) error) error {
		s, err := state.OpenOrLoad(opts.stateDir)
		if err != nil {
			return err
		}
		defer s.Close()
		d, err := dispatch.Open(s, netns, true)
		if err != nil {
			return err
		}
		defer d.Close()
		return f(d)
	}
	bindArgs := func(args []string) (dispatch.Binding, error) {
		return dispatch.ParseBinding(args[0], args[1], args[2], args[3])
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "bind LABEL tcp|udp PREFIX PORTS",
		Short:   "Send PREFIX on PORTS (N, N-M or 0-65535) to LABEL's socket",
		Example: "  portcullisctl dispatch bind web tcp 127.0.7.0/24 80\n  portcullisctl dispatch bind proxy tcp 192.0.2.0/24 0-65535",
		Args:    cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bindArgs(args)
			if err != nil {
				return err
			}
			return change(func(d *dispatch.Dispatcher) error { return d.Bind(b) })
		},
	}, &cobra.Command{
		Use:   "unbind LABEL tcp|udp PREFIX PORTS",
		Short: "Remove a binding",
		Args:  cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := bindArgs(args)
			if err != nil {
				return err
			}
			return change(func(d *dispatch.Dispatcher) error { return d.Unbind(b) })
		},
	}, &cobra.Command{
		Use:   "unregister LABEL",
		Short: "Remove LABEL's sockets (its bindings then refuse traffic)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return change(func(d *dispatch.Dispatcher) error { return d.Unregister(args[0]) })
		},
	}, newDispatchRegisterCommand(opts, change), &cobra.Command{
		Use:   "list",
		Short: "Show bindings, their sockets and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			listing := &dispatch.Listing{NetNS: netns, Destinations: []dispatch.Destination{}}
			s, err := state.Open(opts.stateDir, false)
			if err != nil && !errors.Is(err, state.ErrNotLoaded) {
				return err
			}
			if err == nil {
				defer s.Close()
				d, err := dispatch.Open(s, netns, false)
				if err != nil && !errors.Is(err, dispatch.ErrNoDispatcher) {
					return err
				}
				if err == nil {
					defer d.Close()
					if listing, err = d.List(); err != nil {
						return err
					}
				}
			}
			return render(cmd.OutOrStdout(), opts, listing, []string{"LABEL", "PROTO", "BINDINGS", "OWNER", "SOCKET", "LOOKUPS", "HITS", "MISSES"}, dispatchRows(listing))
		},
	})
	return cmd
}

func newDispatchRegisterCommand(opts *options, change func(func(*dispatch.Dispatcher) error) error) *cobra.Command {
	var pid, fd int
	cmd := &cobra.Command{
		Use:   "register LABEL --pid PID [--fd FD]",
		Short: "Take a process's listening TCP or bound UDP socket (pidfd_getfd) as LABEL's socket",
		Long: `Copy a socket out of a running process with pidfd_getfd and register it
under LABEL for its protocol. Without --fd the process must have exactly
one listening TCP or bound UDP socket (of a protocol LABEL is bound for) in
the namespace. When a container's policy owns LABEL, the process must be
in that container. The socket leaves the dispatcher when the process
closes it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pid <= 0 {
				return fmt.Errorf("--pid must be a process id, not %d", pid)
			}
			return change(func(d *dispatch.Dispatcher) error {
				sock, err := d.Register(args[0], pid, fd)
				if err != nil {
					return err
				}
				return render(cmd.OutOrStdout(), opts, sock, []string{"LABEL", "PROTO", "LOCAL", "SOCKET", "PID", "FD"},
					[][]string{{sock.Label, string(sock.Protocol), sock.Local, strconv.FormatUint(sock.Cookie, 10), strconv.Itoa(sock.PID), strconv.Itoa(sock.FD)}})
			})
		},
	}
	cmd.Flags().IntVar(&pid, "pid", 0, "the process holding the socket")
	cmd.Flags().IntVar(&fd, "fd", -1, "the socket's fd in that process (default: its only listening or bound socket)")
	cmd.MarkFlagRequired("pid")
	return cmd
}

func dispatchRows(l *dispatch.Listing) [][]string {
	var rows [][]string
	for _, d := range l.Destinations {
		var bs []string
		for _, b := range d.Bindings {
			bs = append(bs, b.Prefix+":"+b.Ports)
		}
		sock := "-"
		if d.Socket != 0 {
			sock = strconv.FormatUint(d.Socket, 10)
		}
		rows = append(rows, []string{d.Label, string(d.Protocol), orDash(strings.Join(bs, ",")), orDash(d.Owner), sock,
			strconv.FormatUint(d.Lookups, 10), strconv.FormatUint(d.Hits, 10), strconv.FormatUint(d.Misses, 10)})
	}
	return rows
}
