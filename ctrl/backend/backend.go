// Package backend is the interface between the cluster controller and the
// orchestrator that really runs services: the local process backend (the
// embedded default, ctrl/backend/local) and Kubernetes (ctrl/backend/kube).
package backend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"

	"github.com/roamnet/roam/dataplane/lb"
)

// ErrNotFound is returned (wrapped) by Get and Delete-then-Get when the
// orchestrator holds no instance of that name.
var ErrNotFound = errors.New("instance not found")

// Port is one port of a service (the vocabulary is lb's).
type Port = lb.Port

// Resources is what one copy of a service asks for.
type Resources struct {
	MilliCPU int64 `json:"milli_cpu,omitempty"`
	MemoryMB int64 `json:"memory_mb,omitempty"`
}

// Spec is what the controller asks a backend to run.
type Spec struct {
	// Name is unique within the cluster; it is a DNS label (the Kubernetes
	// backend names its Deployment and Service after it). Foreign copies
	// are named by the controller so they cannot clash with local ones.
	Name string
	// Home is the id of the home cluster; MigrationID the migration that
	// made this copy (empty for a first deploy) and Epoch the home's
	// counter of moves: together the copy's fence. Backends record them on
	// the instance (labels, annotations) so a restarted controller can
	// reconcile, and a controller acts on a copy only with its own epoch.
	Home        string
	MigrationID string
	Epoch       uint64
	Image       string   // container image (kubernetes)
	Command     []string // command line (local); empty with Demo
	Demo        bool     // run roam's built-in demo HTTP service (local)
	Ports       []Port
	Resources   Resources
}

// SameWorkload reports whether s and o run the same thing (everything but
// the fence: Home, MigrationID, Epoch). A copy already running the same
// workload is reused, relabelled with the new fence.
func (s Spec) SameWorkload(o Spec) bool {
	s.Home, s.MigrationID, s.Epoch = "", "", 0
	o.Home, o.MigrationID, o.Epoch = "", "", 0
	return reflect.DeepEqual(s, o)
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Validate reports why s cannot be deployed.
func (s Spec) Validate() error {
	if !dnsLabel.MatchString(s.Name) {
		return fmt.Errorf("spec %q: name must be a DNS label (lowercase letters, digits, '-', at most 63)", s.Name)
	}
	if err := lb.ValidateWorkload(s.Ports, s.Resources.MilliCPU, s.Resources.MemoryMB); err != nil {
		return fmt.Errorf("spec %q: %w", s.Name, err)
	}
	return nil
}

// Instance is a running (or starting) copy as the orchestrator reports it.
type Instance struct {
	Name        string
	Home        string
	MigrationID string
	Epoch       uint64
	// Endpoints are where other clusters reach the copy, one per Spec port,
	// in the same order.
	Endpoints []netip.AddrPort
	Ready     bool
}

// Capacity is what the cluster has and uses; it feeds the hellos.
type Capacity struct {
	MilliCPU, MemoryMB, Pods             int64
	UsedMilliCPU, UsedMemoryMB, UsedPods int64
}

// Backend runs services. Every method is safe for concurrent use and honours
// ctx.
type Backend interface {
	// Deploy starts a copy and returns once it is ready (its own process
	// holds its ports and its readiness probe passes) or ctx ends.
	// Deploying a name that already runs the same workload (SameWorkload)
	// returns the running instance, relabelled with s's fence; a
	// different workload under that name is an error.
	Deploy(ctx context.Context, s Spec) (Instance, error)
	// Delete stops a copy; deleting a missing one is not an error.
	Delete(ctx context.Context, name string) error
	// Get returns one copy, or an error wrapping ErrNotFound.
	Get(ctx context.Context, name string) (Instance, error)
	// List returns every copy this backend runs for roam.
	List(ctx context.Context) ([]Instance, error)
	// Capacity reports the cluster's capacity and use.
	Capacity(ctx context.Context) (Capacity, error)
}
