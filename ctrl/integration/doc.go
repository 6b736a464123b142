// Package integration holds the controller's end-to-end tests: two and three
// in-process controllers on loopback with the embedded meta-orchestrator,
// the local backend and real agents over the BPF data plane.
package integration
