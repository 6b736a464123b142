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
	"slices"
	"time"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
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
	// Redirect is how the home sends the service's packets to where it
	// runs abroad: "nat" or "srv6" (the client's packet unchanged in IPv6 +
	// SRH; the client's address reaches the service). Empty: the
	// cluster's default (roam-ctrl --redirect-mode).
	Redirect lb.Mode `json:"redirect,omitempty"`
	// DirectReturn (SRv6 only): the abroad copy answers its clients
	// itself, from the frontend's address, instead of back through the
	// home (direct server return; README "Direct server return" says
	// where the network allows it and what it risks). Unset: the
	// cluster's default (roam-ctrl --srv6-direct-return, off).
	DirectReturn *bool `json:"direct_return,omitempty"`
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
	if _, err := lb.ParseMode(string(d.Redirect)); err != nil {
		return fmt.Errorf("service %q: %w", d.Name, err)
	}
	return nil
}

// RedirectMode is d's redirect mode, or def (the cluster's default) when d names none.
func (d Descriptor) RedirectMode(def lb.Mode) lb.Mode { return d.Redirect.Or(def).Or(lb.ModeNAT) }

// Spec is the backend spec for one copy of d.
func (d Descriptor) Spec(home, migrationID string) backend.Spec {
	return backend.Spec{Name: d.Name, Home: home, MigrationID: migrationID, Image: d.Image,
		Command: d.Command, Demo: d.Demo, Ports: d.Ports, Resources: d.Resources}
}

// Meta is d as the meta-orchestrator sees it.
func (d Descriptor) Meta() meta.ServiceDescriptor {
	ports := slices.Clone(d.Ports) // the same lb.Port: not shared with d
	cons := d.Constraints
	if d.NeedMbps > cons.MinBandwidthMbps {
		// The need is toward the users, whose traffic enters at the
		// home: candidates are judged on the path from the home.
		cons.MinBandwidthMbps = d.NeedMbps
		if cons.LinkFrom == "" {
			cons.LinkFrom = meta.LinkFromHome
		}
	}
	return meta.ServiceDescriptor{Name: d.Name, Ports: ports,
		Resources: meta.Resources{MilliCPU: d.Resources.MilliCPU, MemoryMB: d.Resources.MemoryMB}, Constraints: cons}
}

// Kind says where a resource runs relative to this cluster.
type Kind string

// Resource kinds (the paper's LR, AR, FR).
const (
	KindLocal   Kind = "local"   // owned here, runs here
	KindAbroad  Kind = "abroad"  // owned here, runs at Cluster
	KindForeign Kind = "foreign" // runs here, owned by Home
)

// Epoch fences the copies of one service: the migration that made a copy
// and a counter its home raises with every move. A cluster acts on a copy
// (removes it, reroutes to it) only when it is told the copy's own epoch,
// so a late or replayed message cannot touch a newer copy. The backend
// records it on the instance.
type Epoch struct {
	MigrationID string `json:"migration_id,omitempty"`
	N           uint64 `json:"n,omitempty"`
}

// EpochOf is the epoch a backend instance carries.
func EpochOf(i backend.Instance) Epoch { return Epoch{MigrationID: i.MigrationID, N: i.Epoch} }

// IsZero reports whether e names no migration (a copy from before epochs).
func (e Epoch) IsZero() bool { return e == Epoch{} }

// Next is the epoch of a copy the migration id makes after e.
func (e Epoch) Next(id string) Epoch { return Epoch{MigrationID: id, N: e.N + 1} }

func (e Epoch) String() string { return fmt.Sprintf("%d/%s", e.N, e.MigrationID) }

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
	Frontends []lb.Frontend `json:"frontends,omitempty"`
	// Endpoints are where the running copy is reached (one per port).
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// SRv6Frontends are, on a foreign record of a service its home
	// redirects by SRv6, the home's frontends this cluster's nodes deliver
	// to the copy (ctrl/migrate/srv6.go).
	SRv6Frontends []lb.Frontend `json:"srv6_frontends,omitempty"`
	// SRv6SID is, for a service redirected by SRv6, the SID of the node
	// at the other end: on an abroad record, the node of the location
	// whose SID the home's path names (ForeignReply.SRv6SID); on a
	// foreign record, the home's node the copy's answers go to
	// (ForeignRequest.HomeSID). Unset (a record from before per-node
	// SIDs): node 0 of the cluster's locator.
	SRv6SID netip.Addr `json:"srv6_sid,omitzero"`
	// Epoch is the copy's fence: the migration that made it and the
	// home's counter (see Epoch).
	Epoch Epoch `json:"epoch,omitzero"`
	// HomeIncarnation is, on a foreign record, the incarnation of the
	// home's store that asked for the copy: only that home may have it
	// removed by saying it runs elsewhere.
	HomeIncarnation string `json:"home_incarnation,omitempty"`
	// LastMigration is the latest migration of this service seen here.
	LastMigration *Migration `json:"last_migration,omitempty"`
	Updated       time.Time  `json:"updated"`
}

// Role says who drives which part of a migration.
type Role string

// Migration roles.
const (
	RoleHome     Role = "home"     // the home cluster moves its own service
	RoleMover    Role = "mover"    // an abroad cluster moves a foreign service on
	RoleReroute  Role = "moved-on" // the home cluster reroutes after a "moved on" notice
	RoleFailsafe Role = "failsafe" // the home cluster takes a service back from a lost cluster
)

// State is where a migration is in its life.
type State string

// Migration states.
const (
	StateRunning State = "running" // journalled, not settled yet
	StateDone    State = "done"
	StateFailed  State = "failed" // aborted before the commit; nothing changed
)

// Stage is one step of a migration, in the order they run. The journal
// records the stage about to run, so a restarted controller knows how far
// a migration got; BeforeCommit is the one place that says whether that is
// before the point of no return.
type Stage uint8

// The stages, in order (the paper's five: trigger, placement request,
// replication, reroute, then verify+commit+drain+cleanup).
const (
	StageNone Stage = iota
	StageTrigger
	StagePlacement
	StageReplication
	StageReroute
	StageVerify
	StageCommit
	StageDrain
	StageCleanup
)

var stageNames = [...]string{"", "trigger", "placement", "replication", "reroute", "verify", "commit", "drain", "cleanup"}

// Stages lists every stage in order (StageNone aside).
func Stages() []Stage {
	out := make([]Stage, 0, len(stageNames)-1)
	for s := StageTrigger; s <= StageCleanup; s++ {
		out = append(out, s)
	}
	return out
}

func (s Stage) String() string {
	if int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

// BeforeCommit reports whether a migration journalled at s has not reached
// its commit: undoing it leaves the service where it was. From the commit
// on, a migration only rolls forward.
func (s Stage) BeforeCommit() bool { return s < StageCommit }

// After reports whether a migration journalled at s has started stage t or
// gone beyond it.
func (s Stage) After(t Stage) bool { return s >= t }

// MarshalText writes the stage's name.
func (s Stage) MarshalText() ([]byte, error) {
	if int(s) >= len(stageNames) {
		return nil, fmt.Errorf("encode stage %d: unknown", uint8(s))
	}
	return []byte(stageNames[s]), nil
}

// UnmarshalText reads a stage's name.
func (s *Stage) UnmarshalText(b []byte) error {
	for i, n := range stageNames {
		if n == string(b) {
			*s = Stage(i)
			return nil
		}
	}
	return fmt.Errorf("decode stage %q: unknown (want one of %v)", b, stageNames[1:])
}

// StageTime is one stage's duration.
type StageTime struct {
	Stage Stage   `json:"stage"`
	Ms    float64 `json:"ms"`
}

// Migration is one move of one service, journalled before each step.
type Migration struct {
	ID      string `json:"id"`
	Service string `json:"service"`
	Role    Role   `json:"role"`
	Reason  string `json:"reason"`
	// Trigger is the measurement that started a move the controller
	// decided by itself (see ctrl/migrate/triggers.go).
	Trigger string `json:"trigger,omitempty"`
	Home    string `json:"home"`
	HomeURL string `json:"home_url,omitempty"`
	// HomeIncarnation is the home's store incarnation that the move's
	// copies answer to: only its word settles a mover's migration.
	HomeIncarnation string `json:"home_incarnation,omitempty"`
	From            string `json:"from"`
	FromURL         string `json:"from_url,omitempty"`
	To              string `json:"to,omitempty"`
	ToURL           string `json:"to_url,omitempty"`
	// FromEndpoints and ToEndpoints are the old and new copies' endpoints
	// (empty for a copy at home, which the data plane reaches as local).
	FromEndpoints []netip.AddrPort `json:"from_endpoints,omitempty"`
	ToEndpoints   []netip.AddrPort `json:"to_endpoints,omitempty"`
	// ToSID is, for a service redirected by SRv6, the SID of the node of
	// the destination the path names (its ForeignReply.SRv6SID).
	ToSID netip.Addr `json:"to_sid,omitzero"`
	// FromSID is, for a service redirected by SRv6 from an abroad
	// location, the SID of the old location's node the path named (the
	// record's SRv6SID when the move started; unset: node 0 of that
	// cluster's locator, as for a record). Recovery rebuilds the path
	// [old, new] from it once the record already says the new location.
	FromSID netip.Addr `json:"from_sid,omitzero"`
	// FromEpoch is the old copy's epoch (cleanup removes only that copy);
	// Epoch the new copy's.
	FromEpoch Epoch `json:"from_epoch,omitzero"`
	Epoch     Epoch `json:"epoch,omitzero"`
	// LocalDecision is true when the placement came from cached hellos.
	LocalDecision bool `json:"local_decision,omitempty"`
	// Placement is the placement reply's judgement: the reason for the
	// destination, why the others ranked lower or were ruled out.
	Placement string      `json:"placement,omitempty"`
	Stage     Stage       `json:"stage"`
	State     State       `json:"state"`
	Error     string      `json:"error,omitempty"`
	Stages    []StageTime `json:"stages"`
	// Times are the paper's Table I measures of this migration.
	Times        Times     `json:"times"`
	DrainedFlows int       `json:"drain_flows_left,omitempty"`
	Started      time.Time `json:"started"`
	Finished     time.Time `json:"finished,omitzero"`
}

// Times are a migration's timings on the paper's definitions (its Table
// I), in milliseconds, measured the same way whatever the role: a mover
// reports the home's staging and commit, which run there. 0: not measured
// (a step that did not run).
type Times struct {
	PR          float64 `json:"pr_ms"`          // the placement round trip
	Replication float64 `json:"replication_ms"` // the call to the destination until it accepted (Wait less its Deploy)
	Wait        float64 `json:"wait_ms"`        // from the replication call until the new copy was ready
	Deploy      float64 `json:"deploy_ms"`      // bringing the new copy up, at the destination
	Reroute     float64 `json:"reroute_ms"`     // the load balancer's new target, from the start of staging on every node to the last node's commit
	Verify      float64 `json:"verify_ms"`      // checking the new copy, before staging
	Commit      float64 `json:"commit_ms"`      // the commit itself, Reroute's share (the commit calls; the agent's own commit when one call per node stages and commits)
	Drain       float64 `json:"drain_ms"`       // from the commit's end until the old copy had no live flow (or the drain timeout)
	Cleanup     float64 `json:"cleanup_ms"`     // the drain plus removing the old copy
}

// Orphan is a copy this cluster must still remove at another cluster (the
// fail-safe took the service home while that cluster was unreachable).
type Orphan struct {
	Service    string `json:"service"`
	Home       string `json:"home"`
	Cluster    string `json:"cluster"`
	ClusterURL string `json:"cluster_url"`
	// Epoch is the orphan copy's: a copy there with another epoch is not
	// the orphan and stays.
	Epoch Epoch `json:"epoch,omitzero"`
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
	// StageAll stages ts[i] for fs[i] on every node, one call per node,
	// and returns each frontend's generations; on a failure nothing stays
	// staged anywhere.
	StageAll(ctx context.Context, fs []lb.Frontend, ts []lb.Target) ([]agentapi.Generations, error)
	// CommitAll commits every fs[i] at gens[i] on every node, one call
	// per node.
	CommitAll(ctx context.Context, fs []lb.Frontend, gens []agentapi.Generations) error
	// Reroute stages and commits, make-before-break across nodes (one
	// call when the cluster has one node); an error wrapping
	// agentapi.ErrNotCommitted says nothing was committed anywhere.
	Reroute(ctx context.Context, fs []lb.Frontend, ts []lb.Target) (agentapi.RerouteTimes, error)
	Abort(ctx context.Context, f lb.Frontend, gens agentapi.Generations) error // gens nil: whatever is staged
	Remove(ctx context.Context, f lb.Frontend) error
	Flows(ctx context.Context, f lb.Frontend, t lb.Target) (int, error)
	// List returns every node's services, in node order (the observed
	// state the resync compares with the records).
	List(ctx context.Context) ([][]lb.Service, error)
	// Warm opens (or checks) a connection to every node's agent, so that
	// the calls that follow pay no handshake.
	Warm(ctx context.Context) error
}

// Peer messages (controller to controller, under /v1/peer).

// ForeignRequest asks a cluster to run a copy on behalf of its home: POST
// /v1/peer/foreign. When Home is the receiving cluster itself, the copy is
// deployed there as its own (a service coming back home).
type ForeignRequest struct {
	Home    string `json:"home"`
	HomeURL string `json:"home_url"`
	// HomeIncarnation is the home's store incarnation (see Health).
	HomeIncarnation string     `json:"home_incarnation,omitempty"`
	Epoch           Epoch      `json:"epoch"`
	Service         Descriptor `json:"service"`
	// Frontends are the home's frontends of the service, for a service
	// the home redirects by SRv6: the copy is delivered packets to them
	// and answers from them (empty otherwise).
	Frontends []lb.Frontend `json:"frontends,omitempty"`
	// HomeSID is, for such a service, the SID of the home's node the
	// copy's answers go back to (one of the home's nodes' SIDs).
	HomeSID netip.Addr `json:"home_sid,omitzero"`
}

// ForeignReply says where the copy is reached.
type ForeignReply struct {
	Cluster   string           `json:"cluster"`
	Endpoints []netip.AddrPort `json:"endpoints"`
	// Home is true when the copy runs at the service's home (target local).
	Home bool `json:"home,omitempty"`
	// DeployMs is how long the destination took to bring the copy up (a
	// part of the call; the rest is the replication proper).
	DeployMs float64 `json:"deploy_ms,omitempty"`
	// SRv6SID is, for a copy of a service redirected by SRv6, the SID of
	// a node here that serves it: the one the home's path names.
	SRv6SID netip.Addr `json:"srv6_sid,omitzero"`
}

// MovedOn tells the home cluster its service now runs at To: POST
// /v1/peer/moved-on. The home reroutes its load balancer before answering.
type MovedOn struct {
	Service string `json:"service"`
	// Epoch is the new copy's; FromEpoch the mover's own copy's, which the
	// home must still be pointing at.
	Epoch     Epoch            `json:"epoch"`
	FromEpoch Epoch            `json:"from_epoch"`
	From      string           `json:"from"`
	To        string           `json:"to"`
	ToURL     string           `json:"to_url"`
	Endpoints []netip.AddrPort `json:"endpoints"`
	// SRv6SID is the new location's node SID (ForeignReply.SRv6SID) for
	// a service redirected by SRv6.
	SRv6SID netip.Addr `json:"srv6_sid,omitzero"`
}

// Where is the home cluster's word on where its service runs: GET
// /v1/peer/where/{name}.
type Where struct {
	// Home and Incarnation say which cluster answered, and which
	// incarnation of its store: a reinstalled home (a new incarnation)
	// has forgotten what it asked for, so its word removes nothing.
	Home        string `json:"home"`
	Incarnation string `json:"incarnation,omitempty"`
	Kind        Kind   `json:"kind,omitempty"`
	Cluster     string `json:"cluster,omitempty"`
	// Epoch is the copy the home's load balancer points at.
	Epoch Epoch `json:"epoch,omitzero"`
	Known bool  `json:"known"`
}

// Health is a controller's answer to a probe: GET /v1/peer/health.
type Health struct {
	Status      string `json:"status"`
	Cluster     string `json:"cluster"`
	Incarnation string `json:"incarnation,omitempty"`
}

// Caller is who makes a call into the engine, as the API layer verified it
// (the peer's certificate or signed token, never a field of the body). The
// zero Caller is a user, or this controller itself.
type Caller struct {
	// Cluster is the calling controller's cluster id; empty for a user.
	Cluster string
}

// Peer reports whether the call comes from another controller.
func (c Caller) Peer() bool { return c.Cluster != "" }

// MigrateRequest is the body of POST /v1/services/{name}/migrate.
type MigrateRequest struct {
	Destination string `json:"destination,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// Trigger is, for a move the controller started by itself, the
	// measurement that triggered it (kept on the migration).
	Trigger string `json:"trigger,omitempty"`
	// Return says when the call answers: "" or ReturnRemoved once the
	// old copy is removed (drain and cleanup included); ReturnCommitted
	// once the new copy serves and the home has committed and recorded
	// it, the drain and cleanup then running behind the answer (the
	// answer's state is running, its stage drain; the journal says when
	// it is done). roamctl asks for ReturnCommitted unless told
	// otherwise.
	Return string `json:"return,omitempty"`
}

// MigrateRequest.Return's values.
const (
	ReturnCommitted = "committed"
	ReturnRemoved   = "removed"
)

// Peers are the calls one controller makes to another.
type Peers interface {
	DeployForeign(ctx context.Context, url string, req ForeignRequest) (ForeignReply, error)
	// RemoveForeign removes the copy of name at url if its epoch is epoch.
	RemoveForeign(ctx context.Context, url, name, home string, epoch Epoch) error
	MovedOn(ctx context.Context, url string, n MovedOn) (Migration, error)
	// Drained tells the cluster at url, from the service's home, that its
	// load balancer has no live flow left to that cluster's copy of name
	// of epoch epoch: the copy may stop at once.
	Drained(ctx context.Context, url, name string, epoch Epoch) error
	// SRv6Gone tells the home at url, from a location of its SRv6
	// service name, that the location's copy of epoch epoch is gone (its
	// data plane forwards on what it no longer delivers): the home may
	// leave it off its path now rather than at its timer.
	SRv6Gone(ctx context.Context, url, name string, epoch Epoch) error
	Where(ctx context.Context, url, name string) (Where, error)
	Health(ctx context.Context, url string) (Health, error)
	// Migrate forwards a user's migrate call to the cluster running the
	// service.
	Migrate(ctx context.Context, url, name string, req MigrateRequest) (Migration, error)
}
