// Package ctrl holds the cluster controller's vocabulary: the service
// descriptor users deploy, the records of local, abroad and foreign
// resources, migrations with their stage timings, and the small interfaces
// the controller needs from the meta-orchestrator client and the agents.
// The store (ctrl/store), the migration engine (ctrl/migrate) and the REST
// API (ctrl/api) build on it.
package ctrl

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/meta"
)

// Descriptor is what a user deploys: POST /v1/services.
type Descriptor struct {
	Name        string            `json:"name"`
	Image       string            `json:"image,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Demo        bool              `json:"demo,omitempty"`
	Ports       []backend.Port    `json:"ports"`
	Resources   backend.Resources `json:"resources,omitempty"`
	Constraints meta.Constraints  `json:"constraints,omitempty"`
	// NeedMbps is the bandwidth the service needs to its users; the
	// policy moves an abroad copy on when the link to it falls below.
	NeedMbps float64 `json:"need_mbps,omitempty"`
}

// Validate reports why d cannot be deployed.
func (d Descriptor) Validate() error {
	if err := d.Spec("", "").Validate(); err != nil {
		return err
	}
	if !d.Demo && len(d.Command) == 0 && d.Image == "" {
		return fmt.Errorf("service %q: one of demo, command or image", d.Name)
	}
	if err := d.Constraints.Validate(); err != nil {
		return fmt.Errorf("service %q: %w", d.Name, err)
	}
	if d.NeedMbps < 0 {
		return fmt.Errorf("service %q: need_mbps must be >= 0", d.Name)
	}
	return nil
}

// Spec is the backend spec for one copy of d.
func (d Descriptor) Spec(home, migrationID string) backend.Spec {
	return backend.Spec{Name: d.Name, Home: home, MigrationID: migrationID, Image: d.Image,
		Command: d.Command, Demo: d.Demo, Ports: d.Ports, Resources: d.Resources}
}

// Meta is d as the meta-orchestrator sees it.
func (d Descriptor) Meta() meta.ServiceDescriptor {
	ports := make([]meta.Port, len(d.Ports))
	for i, p := range d.Ports {
		ports[i] = meta.Port{Name: p.Name, Port: p.Port, Protocol: p.Protocol}
	}
	return meta.ServiceDescriptor{Name: d.Name, Ports: ports,
		Resources: meta.Resources{MilliCPU: d.Resources.MilliCPU, MemoryMB: d.Resources.MemoryMB}, Constraints: d.Constraints}
}

// Kind says where a resource runs relative to this cluster.
type Kind string

// Resource kinds (the paper's LR, AR, FR).
const (
	KindLocal   Kind = "local"   // owned here, runs here
	KindAbroad  Kind = "abroad"  // owned here, runs at Cluster
	KindForeign Kind = "foreign" // runs here, owned by Home
)

// Record is what a controller keeps about one service.
type Record struct {
	Service Descriptor `json:"service"`
	Kind    Kind       `json:"kind"`
	// Home and HomeURL name the owner (this cluster for local and abroad).
	Home    string `json:"home"`
	HomeURL string `json:"home_url,omitempty"`
	// Cluster and ClusterURL name where the copy runs.
	Cluster    string `json:"cluster"`
	ClusterURL string `json:"cluster_url,omitempty"`
	// Frontends are what users hit at the home cluster (local and abroad).
	Frontends []dataplane.Frontend `json:"frontends,omitempty"`
	// Endpoints are where the running copy is reached (one per port).
	Endpoints   []netip.AddrPort `json:"endpoints,omitempty"`
	MigrationID string           `json:"migration_id,omitempty"`
	// LastMigration is the latest migration of this service seen here.
	LastMigration *Migration `json:"last_migration,omitempty"`
	Updated       time.Time  `json:"updated"`
}

// Migration roles: who drives which part.
const (
	RoleHome     = "home"     // the home cluster moves its own service
	RoleMover    = "mover"    // an abroad cluster moves a foreign service on
	RoleReroute  = "moved-on" // the home cluster reroutes after a "moved on" notice
	RoleFailsafe = "failsafe" // the home cluster takes a service back from a lost cluster
)

// Migration states.
const (
	StateRunning = "running"
	StateDone    = "done"
	StateFailed  = "failed" // aborted before the commit; nothing changed
)

// Stage names (journal steps and histogram labels).
const (
	StageTrigger     = "trigger"
	StagePlacement   = "placement"
	StageReplication = "replication"
	StageReroute     = "reroute"
	StageVerify      = "verify"
	StageCommit      = "commit"
	StageDrain       = "drain"
	StageCleanup     = "cleanup"
)

// StageTime is one stage's duration.
type StageTime struct {
	Stage string  `json:"stage"`
	Ms    float64 `json:"ms"`
}

// Migration is one move of one service, journalled before each step.
type Migration struct {
	ID      string `json:"id"`
	Service string `json:"service"`
	Role    string `json:"role"`
	Reason  string `json:"reason"`
	Home    string `json:"home"`
	HomeURL string `json:"home_url,omitempty"`
	From    string `json:"from"`
	FromURL string `json:"from_url,omitempty"`
	To      string `json:"to,omitempty"`
	ToURL   string `json:"to_url,omitempty"`
	// FromEndpoints and ToEndpoints are the old and new copies' endpoints
	// (empty for a copy at home, which the data plane reaches as local).
	FromEndpoints []netip.AddrPort `json:"from_endpoints,omitempty"`
	ToEndpoints   []netip.AddrPort `json:"to_endpoints,omitempty"`
	// LocalDecision is true when the placement came from cached hellos.
	LocalDecision bool        `json:"local_decision,omitempty"`
	Stage         string      `json:"stage"`
	State         string      `json:"state"`
	Error         string      `json:"error,omitempty"`
	Stages        []StageTime `json:"stages"`
	DrainedFlows  int         `json:"drain_flows_left,omitempty"`
	Started       time.Time   `json:"started"`
	Finished      time.Time   `json:"finished,omitzero"`
}

// Orphan is a copy this cluster must still remove at another cluster (the
// fail-safe took the service home while that cluster was unreachable).
type Orphan struct {
	Service     string `json:"service"`
	Home        string `json:"home"`
	Cluster     string `json:"cluster"`
	ClusterURL  string `json:"cluster_url"`
	MigrationID string `json:"migration_id,omitempty"`
}

// Placer answers placement requests (meta.Client).
type Placer interface {
	Place(ctx context.Context, req meta.PlacementRequest) (meta.PlacementReply, error)
}

// Directory finds a cluster's controller URL (meta.Client's cached hellos,
// or a static list).
type Directory interface {
	ControllerURL(clusterID string) (string, bool)
}

// Agents drives every node's agent two-phase (agentapi.Group).
type Agents interface {
	Stage(ctx context.Context, f dataplane.Frontend, t dataplane.Target) (agentapi.Generations, error)
	Commit(ctx context.Context, f dataplane.Frontend, gens agentapi.Generations) error
	Abort(ctx context.Context, f dataplane.Frontend) error
	Remove(ctx context.Context, f dataplane.Frontend) error
	Flows(ctx context.Context, f dataplane.Frontend, t dataplane.Target) (int, error)
}

// Peer messages (controller to controller, under /v1/peer).

// ForeignRequest asks a cluster to run a copy on behalf of its home: POST
// /v1/peer/foreign. When Home is the receiving cluster itself, the copy is
// deployed there as its own (a service coming back home).
type ForeignRequest struct {
	Home        string     `json:"home"`
	HomeURL     string     `json:"home_url"`
	MigrationID string     `json:"migration_id"`
	Service     Descriptor `json:"service"`
}

// ForeignReply says where the copy is reached.
type ForeignReply struct {
	Cluster   string           `json:"cluster"`
	Endpoints []netip.AddrPort `json:"endpoints"`
	// Home is true when the copy runs at the service's home (target local).
	Home bool `json:"home,omitempty"`
}

// MovedOn tells the home cluster its service now runs at To: POST
// /v1/peer/moved-on. The home reroutes its load balancer before answering.
type MovedOn struct {
	Service     string           `json:"service"`
	MigrationID string           `json:"migration_id"`
	From        string           `json:"from"`
	To          string           `json:"to"`
	ToURL       string           `json:"to_url"`
	Endpoints   []netip.AddrPort `json:"endpoints"`
}

// Where is the home cluster's word on where its service runs: GET
// /v1/peer/where/{name}.
type Where struct {
	Home    string `json:"home"`
	Kind    Kind   `json:"kind,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	Known   bool   `json:"known"`
}

// MigrateRequest is the body of POST /v1/services/{name}/migrate.
type MigrateRequest struct {
	Destination string `json:"destination,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// Peers are the calls one controller makes to another.
type Peers interface {
	DeployForeign(ctx context.Context, url string, req ForeignRequest) (ForeignReply, error)
	RemoveForeign(ctx context.Context, url, name, home, migrationID string) error
	MovedOn(ctx context.Context, url string, n MovedOn) (Migration, error)
	Where(ctx context.Context, url, name string) (Where, error)
	Health(ctx context.Context, url string) error
	// Migrate forwards a user's migrate call to the cluster running the
	// service.
	Migrate(ctx context.Context, url, name string, req MigrateRequest) (Migration, error)
}
