// Command portcullis is the chained CNI plugin: listed after the main
// plugin (bridge, ptp, macvlan...) in a conflist, it attaches the
// container's portcullis policy to the container's cgroup at ADD and
// removes it at DEL. The logic is in pkg/cni; see docs/cni.md.
package main

import (
	"runtime/debug"

	"github.com/portcullis-net/portcullis/pkg/cni"
	_ "github.com/portcullis-net/portcullis/pkg/dispatch" // policies' dispatch bindings follow attach and detach
)

func main() {
	// A run lives a few milliseconds and allocates a few MiB: a garbage
	// collection would only cost time (about 0.3 ms of an ADD's 6). The
	// limit makes the collector run again should a run ever grow.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	cni.Main()
}
