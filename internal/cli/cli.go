// Package cli is what roam's commands (the daemons, the testbed, the soak
// and the benchmarks) do in main: run until SIGINT or SIGTERM, print an
// error as "name: error" and exit 1. A leaf package: it
// imports nothing of roam.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Main calls run with the command line's arguments (os.Args[1:]) and a
// context that ends on SIGINT or SIGTERM. An error is printed to stderr
// after name and ends the process with status 1; flag.ErrHelp (-h, the
// flag package has printed the usage) ends it with 0.
func Main(name string, run func(ctx context.Context, args []string) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
