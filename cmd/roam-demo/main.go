// Command roam-demo is roam's built-in demo service on its own:
// `roam-demo --listen ADDR:PORT [--udp ADDR:PORT]... --cluster ID`, the same
// as `roam-ctrl demo`. The local backend runs it when it sits beside
// roam-ctrl: a small binary that imports only ctrl/demo starts in a
// fraction of the controller's time (no Kubernetes client, NATS or
// Prometheus to initialise), and a copy's start is a migration's deploy.
package main

import (
	"github.com/roamnet/roam/ctrl/demo"
	"github.com/roamnet/roam/internal/cli"
)

func main() { cli.Main("roam-demo", demo.Main) }
