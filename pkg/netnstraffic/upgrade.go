package netnstraffic

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"

	"github.com/portcullis-net/portcullis/pkg/state"
)

func init() { state.RegisterUpgradeHook(upgrade) }

// upgrade follows portcullisctl upgrade (docs/upgrade.md): the pinned
// programs read the traffic map of the old layout, so they are loaded
// again against the state's maps, every pod's links get them with
// link.Update (the interfaces never go uncounted), and a pod attached
// before these counters existed (layout 1) gets its links. It is
// idempotent.
func upgrade(s *state.State, from int) error {
	dir := s.Dir()
	list, err := s.Attachments()
	if err != nil {
		return err
	}
	var pods []state.Attachment
	for _, a := range list {
		if a.KeyedByNetNS() {
			pods = append(pods, a)
		}
	}
	if err := os.RemoveAll(filepath.Join(Dir(dir), "progs")); err != nil {
		return err
	}
	if len(pods) == 0 {
		return nil
	}
	progs, err := load(dir)
	if errors.Is(err, ErrUnsupported) {
		return nil
	} else if err != nil {
		return err
	}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, a := range pods {
		paths, _ := filepath.Glob(filepath.Join(LinkDir(dir, a.ID), "*"))
		if len(paths) == 0 {
			if !a.NetNSAlive() {
				continue
			}
			if err := Attach(dir, &a); err != nil {
				return err
			}
			continue
		}
		for _, path := range paths {
			for i, p := range programs {
				if !strings.HasSuffix(path, "-"+p.suffix) {
					continue
				}
				l, err := link.LoadPinnedLink(path, nil)
				if err != nil {
					return fmt.Errorf("traffic counters of %s: %w", a.ID, err)
				}
				err = l.Update(progs[i])
				l.Close()
				if err != nil && !a.NetNSAlive() {
					continue // its interfaces went with the namespace
				} else if err != nil {
					return fmt.Errorf("traffic counters of %s: update %s: %w", a.ID, filepath.Base(path), err)
				}
			}
		}
	}
	return nil
}
