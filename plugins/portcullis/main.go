// Command portcullis is the chained CNI plugin: listed after the main
// plugin (bridge, ptp, macvlan...) in a conflist, it attaches the
// container's portcullis policy to the container's cgroup at ADD and
// removes it at DEL. The logic is in pkg/cni; see docs/cni.md.
package main

import (
	"github.com/portcullis-net/portcullis/pkg/cni"
	_ "github.com/portcullis-net/portcullis/pkg/dispatch" // policies' dispatch bindings follow attach and detach
)

func main() {
	cni.Main()
}
