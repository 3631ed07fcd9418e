package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/portcullis-net/portcullis/pkg/cgroup"
	"github.com/portcullis-net/portcullis/pkg/state"
	"github.com/portcullis-net/portcullis/pkg/terminate"
)

func init() { register(newDetachCommand) }

func newDetachCommand(opts *options) *cobra.Command {
	var id, cgroupPath string
	cmd := &cobra.Command{
		Use:   "detach --id ID | --cgroup PATH",
		Short: "Remove an attachment: its links, map entries and record",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (id == "") == (cgroupPath == "") {
				return errors.New("give exactly one of --id and --cgroup")
			}
			s, err := state.Open(opts.stateDir, true)
			if err != nil {
				return err
			}
			defer s.Close()
			if cgroupPath != "" {
				if id, err = attachmentOfCgroup(s, cgroupPath); err != nil {
					return err
				}
			}
			// Clients still connected to the container lose their
			// sockets too; a failure there is a warning only.
			report, err := terminate.Detach(s, id, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached %s\n", id)
			if report != nil && report.Destroyed > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "terminated %d sockets connected to %s\n", report.Destroyed, id)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "attachment id")
	cmd.Flags().StringVar(&cgroupPath, "cgroup", "", "cgroup v2 path of the attachment")
	return cmd
}

// attachmentOfCgroup finds the attachment of a cgroup by path; the cgroup
// itself may already be gone.
func attachmentOfCgroup(s *state.State, path string) (string, error) {
	if cg, err := cgroup.Resolve(path); err == nil {
		if id, err := s.AttachmentOfCgroup(cg.ID); err != nil || id != "" {
			return id, err
		}
	}
	// The cgroup is gone (or was attached under another path): the
	// records know its path.
	list, err := s.Attachments()
	if err != nil {
		return "", err
	}
	want := map[string]bool{path: true}
	if cg, err := cgroup.Resolve(path); err == nil {
		want[cg.Path] = true
	} else if mount, err := cgroup.Mount(); err == nil {
		want[filepath.Join(mount, path)] = true // the cgroup is gone
	}
	for _, a := range list {
		if want[a.CgroupPath] {
			return a.ID, nil
		}
	}
	return "", fmt.Errorf("%w: no attachment for cgroup %s", state.ErrNotFound, path)
}
