package main

import (
	"fmt"
	"io"

	"github.com/portcullis-net/portcullis/pkg/input"
	"github.com/portcullis-net/portcullis/pkg/policy"
)

// readPolicy reads --policy: a file, or stdin for "-" and "/dev/stdin"
// (a pipe, which the file path refuses as a FIFO). Either goes through
// input's 1 MiB limit; stdin also through its deadline.
func readPolicy(path string, stdin io.Reader) (*policy.Policy, error) {
	if path != "-" && path != "/dev/stdin" {
		return policy.ParseFile(path)
	}
	data, err := input.ReadStdin(stdin)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := policy.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("stdin: %w", err)
	}
	return p, nil
}
