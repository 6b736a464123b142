// Package demotest lets a test binary double as the demo service, the way
// roam-ctrl does: the local backend starts the built-in demo as its own
// executable with the arguments "demo ...", and in a test that executable
// is the test binary. For tests only.
package demotest

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/roamnet/roam/ctrl/demo"
)

// ServeIfAsked, called first in TestMain, serves the demo and exits when
// the process was started as the demo (first argument "demo"); otherwise
// it returns at once. The demo stops on SIGTERM or SIGINT; the process
// exits 1 if it failed.
func ServeIfAsked() {
	if len(os.Args) > 1 && os.Args[1] == "demo" {
		Serve(os.Args[2:])
	}
}

// Main is a test package's TestMain when its tests run the demo as the
// test binary: the demo when asked (ServeIfAsked), else the tests.
func Main(m *testing.M) {
	ServeIfAsked()
	os.Exit(m.Run())
}

// Serve runs the demo with args and exits: 0 once it stopped, 1 if it
// failed.
func Serve(args []string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := demo.Main(ctx, args)
	stop()
	if err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}
