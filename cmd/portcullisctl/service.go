package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/services"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

func init() { register(newServiceCommand) }

// withServices runs f with the service maps and the current providers.
// Changes hold the state's exclusive lock; a change loads the state if it
// is not loaded yet.
func withServices(opts *options, change bool, f func(s *state.State, m *services.Maps, providers []services.Provider) error) error {
	var (
		s   *state.State
		err error
	)
	if change {
		s, err = state.OpenOrLoad(opts.stateDir)
	} else {
		s, err = state.Open(opts.stateDir, false)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	return s.WithServices(func(m *services.Maps, providers []services.Provider) error {
		return f(s, m, providers)
	})
}

func parseEndpoints(list []string) ([]services.Endpoint, error) {
	var out []services.Endpoint
	for _, s := range list {
		e, err := services.ParseEndpoint(s)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func newServiceCommand(opts *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Manage services: frontends that connect() resolves to live backends",
	}
	cmd.AddCommand(newServiceAdd(opts), newServiceDel(opts), newServiceList(opts), newServiceShow(opts),
		newServiceApply(opts), newServiceBackend(opts))
	return cmd
}

func newServiceAdd(opts *options) *cobra.Command {
	var frontends, backends []string
	cmd := &cobra.Command{
		Use:   "add NAME --frontend ADDR:PORT[/PROTO]... [--backend ADDR:PORT[/PROTO]...]",
		Short: "Add a service; containers whose policy provides it become its backends once they listen",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := services.Declaration{Name: args[0]}
			var err error
			if d.Frontends, err = parseEndpoints(frontends); err != nil {
				return err
			}
			if d.Backends, err = parseEndpoints(backends); err != nil {
				return err
			}
			return withServices(opts, true, func(_ *state.State, m *services.Maps, providers []services.Provider) error {
				if err := m.Create(d, providers); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "added service %s\n", d.Name)
				return nil
			})
		},
	}
	cmd.Flags().StringSliceVar(&frontends, "frontend", nil, "address clients dial, ADDR:PORT[/tcp|udp] (repeatable)")
	cmd.Flags().StringSliceVar(&backends, "backend", nil, "static backend, ADDR:PORT[/tcp|udp] (repeatable)")
	return cmd
}

func newServiceDel(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "del NAME",
		Short: "Remove a service",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withServices(opts, true, func(s *state.State, m *services.Maps, _ []services.Provider) error {
				svc, err := m.Get(args[0])
				if err != nil {
					return err
				}
				if err := m.Delete(args[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted service %s\n", args[0])
				terminateRemoved(cmd, s, m, terminate.ServiceBackends(svc))
				return nil
			})
		},
	}
}

func newServiceBackend(opts *options) *cobra.Command {
	cmd := &cobra.Command{Use: "backend", Short: "Add or remove a service's static backends"}
	for _, verb := range []string{"add", "del"} {
		cmd.AddCommand(&cobra.Command{
			Use:   verb + " NAME ADDR:PORT[/PROTO]",
			Short: map[string]string{"add": "Add a static backend", "del": "Remove a static backend"}[verb],
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				e, err := services.ParseEndpoint(args[1])
				if err != nil {
					return err
				}
				return withServices(opts, true, func(s *state.State, m *services.Maps, providers []services.Provider) error {
					if verb == "add" {
						err = m.AddBackend(args[0], e, providers)
					} else {
						err = m.DelBackend(args[0], e, providers)
					}
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "service %s: backend %s %s\n", args[0], e, map[string]string{"add": "added", "del": "removed"}[verb])
					if verb == "del" {
						terminateRemoved(cmd, s, m, []terminate.Target{{Addr: e.Addr.Addr(), Port: e.Addr.Port(), Protocol: string(e.Protocol)}})
					}
					return nil
				})
			},
		})
	}
	return cmd
}

func newServiceApply(opts *options) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "apply [--dir DIR]",
		Short: "Apply the service declarations of services.d (also done at every attach)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			decls, err := services.LoadDir(dir)
			if err != nil {
				return err
			}
			return withServices(opts, true, func(_ *state.State, m *services.Maps, providers []services.Provider) error {
				if err := m.Apply(decls, providers); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "applied %d services from %s\n", len(decls), dir)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&dir, "dir", services.Dir(), "directory of *.json declarations ($PORTCULLIS_SERVICES_DIR)")
	return cmd
}

var serviceHeader = []string{"NAME", "FRONTENDS", "BACKENDS", "LIVE"}

func newServiceList(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List services with their frontends and how many backends are live",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withServices(opts, false, func(_ *state.State, m *services.Maps, _ []services.Provider) error {
				list, err := m.List()
				if err != nil {
					return err
				}
				var rows [][]string
				for _, svc := range list {
					live := 0
					for _, b := range svc.Backends {
						if b.Live {
							live++
						}
					}
					rows = append(rows, []string{svc.Name, joinEndpoints(svc.Frontends), fmt.Sprint(len(svc.Backends)), fmt.Sprint(live)})
				}
				return render(cmd.OutOrStdout(), opts, list, serviceHeader, rows)
			})
		},
	}
}

func joinEndpoints(list []services.Endpoint) string {
	var s []string
	for _, e := range list {
		s = append(s, e.String())
	}
	return orDash(strings.Join(s, ","))
}

var backendHeader = []string{"KIND", "BACKEND", "ATTACHMENT", "NODE", "LIVE"}

func newServiceShow(opts *options) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a service's frontends and backends, and which backends are live",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withServices(opts, false, func(s *state.State, m *services.Maps, _ []services.Provider) error {
				svc, err := m.Get(args[0])
				if err != nil {
					return err
				}
				ids, err := attachmentIDs(s)
				if err != nil {
					return err
				}
				for i := range svc.Backends {
					if b := &svc.Backends[i]; b.Kind == "provider" {
						b.Attachment = ids[b.CgroupID]
					}
				}
				if opts.output == "json" {
					return render(cmd.OutOrStdout(), opts, svc, nil, nil)
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "service %s\nfrontends: %s\n", svc.Name, joinEndpoints(svc.Frontends))
				if svc.DeclaredBy != "" {
					fmt.Fprintf(out, "declared by: node %s (portcullisctl sync)\n", svc.DeclaredBy)
				}
				fmt.Fprintln(out)
				var rows [][]string
				for _, b := range svc.Backends {
					addr := "-"
					if b.Endpoint != nil {
						addr = b.Endpoint.String()
					} else {
						addr = fmt.Sprintf("(not listening on %d/%s)", b.Port, b.Protocol)
					}
					node := b.Node
					if b.Kind != "remote" {
						node = "(this host)"
					}
					rows = append(rows, []string{b.Kind, addr, orDash(b.Attachment), node, map[bool]string{true: "yes", false: "no"}[b.Live]})
				}
				if err := render(out, opts, nil, backendHeader, rows); err != nil {
					return err
				}
				return warnDrops(cmd, m)
			})
		},
	}
}

// attachmentIDs maps cgroup ids to attachment ids.
func attachmentIDs(s *state.State) (map[uint64]string, error) {
	list, err := s.Attachments()
	if err != nil {
		return nil, err
	}
	ids := map[uint64]string{}
	for _, a := range list {
		ids[a.CgroupID] = a.ID
	}
	return ids, nil
}

// warnDrops tells the operator when the kernel could not record something
// because a map was full.
func warnDrops(cmd *cobra.Command, m *services.Maps) error {
	drops, err := m.Drops()
	if err != nil {
		return err
	}
	for name, n := range drops {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: map %s was full %d times: those sockets are missing here (unload and load a state with bigger maps)\n", name, n)
	}
	return nil
}

// terminateRemoved destroys the client sockets still connected to backends
// that were just taken out of service. It never fails the command: the
// change is made, and a kernel without bpf_sock_destroy only warns.
func terminateRemoved(cmd *cobra.Command, s *state.State, m *services.Maps, removed []terminate.Target) {
	report, err := terminate.Removed(s, m, removed)
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: terminate sockets connected to removed backends: %v\n", err)
		return
	}
	if report.Destroyed > 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "terminated %d sockets connected to removed backends\n", report.Destroyed)
	}
}
