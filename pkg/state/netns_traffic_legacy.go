package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Layout 2 counted the traffic of namespace-keyed attachments with tcx
// programs on the interfaces inside each pod's namespace:
//
//	netns-traffic/progs/<name>                  the two programs
//	netns-traffic/links/<id>/<ifindex>-<way>    each pod's tcx links
//
// Layout 3 counts them with the namespace copy's cgroup_skb programs
// (netns.go), whose links upgrade's swap adds to netns/links/. Once those
// are in place, removeNetNSTraffic detaches the tcx links and removes the
// folder (for the moment in between, a pod's packets count twice). It is
// idempotent.
func removeNetNSTraffic(dir string) error {
	root := filepath.Join(dir, "netns-traffic")
	folders, _ := filepath.Glob(filepath.Join(root, "links", "*"))
	var errs []error
	for _, f := range folders {
		errs = append(errs, detachLinks(f))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove the tcx traffic links of layout 2: %w", err)
	}
	if err := os.RemoveAll(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
