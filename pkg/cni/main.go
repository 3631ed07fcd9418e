package cni

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/portcullis-net/portcullis/pkg/input"
)

// Main runs the plugin as skel.PluginMainFuncs does, with two differences:
// stdin is read through input's size limit and deadline before skel sees
// it, and an error is printed with the cniVersion the spec's error shape
// has (skel prints only code and msg).
func Main() {
	// A runtime that stops reading stdout must not kill the plugin with
	// SIGPIPE between attaching and undoing: the write fails instead, and
	// ADD undoes what it did.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(mainWith(os.Getenv("CNI_COMMAND"), os.Stdin, os.Stdout))
}

func mainWith(command string, stdin *os.File, stdout io.Writer) int {
	var data []byte
	// Without a command skel prints its about text, and VERSION reads no
	// conf: neither waits for stdin.
	if command != "" && command != "VERSION" {
		var err error
		if data, err = input.ReadStdin(stdin); err != nil {
			printError(stdout, data, types.NewError(types.ErrIOFailure, "network configuration on "+err.Error(), ""))
			return 1
		}
		r, w, err := os.Pipe()
		if err != nil {
			printError(stdout, data, types.NewError(types.ErrIOFailure, err.Error(), ""))
			return 1
		}
		go func() {
			w.Write(data)
			w.Close()
		}()
		os.Stdin = r
	}
	if e := skel.PluginMainFuncsWithError(Funcs(), VersionInfo, About); e != nil {
		printError(stdout, data, e)
		return 1
	}
	return 0
}

// errorResult is the spec's error output.
type errorResult struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// printError writes e with the conf's cniVersion when the conf names one
// the plugin speaks, and else (no conf, or one that cannot be parsed) the
// newest it speaks.
func printError(w io.Writer, conf []byte, e *types.Error) {
	data, _ := json.MarshalIndent(errorResult{CNIVersion: errorVersion(conf), Code: e.Code, Msg: e.Msg, Details: e.Details}, "", "    ")
	fmt.Fprintf(w, "%s\n", data)
}

func errorVersion(conf []byte) string {
	supported := VersionInfo.SupportedVersions()
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(conf, &c) == nil && slices.Contains(supported, c.CNIVersion) {
		return c.CNIVersion
	}
	return supported[len(supported)-1]
}
