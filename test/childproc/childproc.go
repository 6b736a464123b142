// Package childproc starts a helper process that a benchmark drives over
// its standard input and output (the userspace proxy of bench-dataplane,
// the client process of bench-meta).
package childproc

import (
	"io"
	"os"
	"os/exec"
)

// Start starts cmd with a pipe to its standard input and one from its
// standard output; its standard error is this process's.
func Start(cmd *exec.Cmd) (stdin io.WriteCloser, stdout io.ReadCloser, err error) {
	cmd.Stderr = os.Stderr
	if stdin, err = cmd.StdinPipe(); err != nil {
		return nil, nil, err
	}
	if stdout, err = cmd.StdoutPipe(); err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return stdin, stdout, nil
}
