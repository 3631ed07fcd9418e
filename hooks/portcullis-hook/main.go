// Command portcullis-hook is the OCI runtime hook that attaches a
// container's portcullis policy at createRuntime (or prestart) and detaches
// it at poststop. The runtime writes the container's state to stdin; the
// stage is the first argument:
//
//	portcullis-hook createRuntime|prestart|poststop < state.json
//
// The policy comes from the container's annotations (io.portcullis.policy,
// io.portcullis.policy-file, io.portcullis.policy-name); a container
// without them is left alone. See docs/oci-hook.md.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	_ "github.com/portcullis-net/portcullis/pkg/dispatch" // policies' dispatch bindings follow attach and detach
	"github.com/portcullis-net/portcullis/pkg/ocihook"
)

func main() {
	// A run lives a few milliseconds: no garbage collection unless it
	// ever grows past the limit (as in the CNI plugin).
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(256 << 20)
	stage := ""
	if len(os.Args) > 1 {
		stage = os.Args[1]
	}
	if err := ocihook.Run(ocihook.ConfigFromEnv(), stage, os.Stdin); err != nil {
		// Runtimes show the hook's stderr in their own error: keep it
		// to one line.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		fmt.Fprintln(os.Stderr, "portcullis-hook: "+msg)
		os.Exit(1)
	}
}
