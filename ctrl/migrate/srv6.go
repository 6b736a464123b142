package migrate

// SRv6 path mode (a service whose descriptor, or the cluster's default,
// says redirect srv6). The home's load balancer sends the client's packets
// unchanged along a segment list of locations' SIDs instead of NAT:
//
//   - steady state: [where it runs];
//   - a move from one abroad location to another: [old, new] is staged and
//     committed (make before break: the old location delivers while its
//     copy serves, keeps the flows it has while it drains, and forwards
//     everything once it is gone), then [new] once the old location says
//     its copy is gone (SRv6Gone; else at the end of its drain budget);
//   - a move from home: [new] (the home's flows stay pinned to its local
//     copy by conntrack, as in NAT mode);
//   - a move back home: local, committed at once; the TCP connections
//     opened along the previous path stay on it while the old copy drains
//     (the home's data plane sends a TCP packet that opens nothing, has no
//     flow pinned at the home and no socket there, along the path in the
//     other slot: bpf/srv6.h srv6_previous) for the data plane's hold
//     (dataplane SRv6Config.PreviousHold), which outlasts the old copy's
//     drain, or until the old location says its copy is gone (the home
//     commits local again); the home sends no "drained" (srv6Moved).
//
// SIDs are per node: node i of a cluster (its agent's place in roam-ctrl's
// --agents, node 0 first) has the SID lb.NodeSID(locator, i) in the
// locator its cluster announces in hellos, set on the agent (roam-agent
// --srv6-sid) and checked by its controller before any SRv6 step
// (agentapi /v1/srv6/node): stable across restarts (the same place, the
// same SID), and no two nodes alike. A location answers the home's
// request for a copy with the SID of one of its nodes that serves it
// (ForeignReply.SRv6SID, picked by the service's name, so copies spread
// over the nodes), which the home's path names (Migration.ToSID, then
// Record.SRv6SID); the home names the node of its own its copy's answers
// go to (ForeignRequest.HomeSID), by its frontend address (homeSID). At a location the controller tells its
// agents the copy's state (serving, draining, gone: agentapi
// /v1/srv6/copies) and installs the copy's return route to the home's SID
// (/v1/srv6/returns). A record from before per-node SIDs (no SID) names
// the cluster's node 0.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
)

// srv6Agents is what a location needs of its agents (agentapi.Group).
type srv6Agents interface {
	SetSRv6Copies(ctx context.Context, fs []lb.Frontend, st dataplane.SRv6State) error
	SetSRv6Returns(ctx context.Context, fs []lb.Frontend, homeSID netip.Addr, remove bool) error
	// SRv6SIDs are the nodes' SIDs, in node order (Old: an agent from
	// before per-node SIDs, its SID unknown).
	SRv6SIDs(ctx context.Context) ([]agentapi.NodeSID, error)
}

// Refusal reasons of roam_ctrl_srv6_refused_total.
const (
	srv6NoLocator  = "no_locator"             // a cluster on the path announces no locator (or is not in the view)
	srv6BadLocator = "bad_locator"            // it announces one that is not a valid locator
	srv6NoAgents   = "no_agents"              // a location whose agents cannot do SRv6
	srv6NoFrontend = "no_frontend"            // a location asked to run an SRv6 copy without the home's frontends
	srv6BadNodeSID = "bad_node_sid"           // a node's SID is not the one its place allocates, or a peer named a SID outside its locator
	srv6NotSRv6    = "direct_return_not_srv6" // a descriptor asks direct_return of a service not redirected by SRv6
)

type srv6Metrics struct {
	refused *prometheus.CounterVec
	steps   *prometheus.CounterVec
	// oldAgents counts the nodes found with an agent from before per-node
	// SIDs, each once (oldSeen).
	oldAgents prometheus.Counter
	// sidsRederived counts stored SIDs re-derived in a renumbered
	// locator, each once (rederived).
	sidsRederived prometheus.Counter
	// dsrOff counts direct-return copies whose answers go home anyway
	// (srv6SharedReturn).
	dsrOff prometheus.Counter

	// The moves at the home that wait for the old location's word that its
	// copy is gone (srv6Moved, SRv6Gone), by service and old copy's epoch.
	mu        sync.Mutex
	words     map[srv6WordKey]*srv6Word
	oldSeen   map[int]bool
	rederived map[srv6Rederived]bool
}

type srv6WordKey struct {
	name  string
	epoch ctrl.Epoch
}

// srv6Word is a word awaited from cluster from: ch is closed when it comes.
type srv6Word struct {
	from string
	ch   chan struct{}
}

func newSRv6Metrics(reg prometheus.Registerer) (*srv6Metrics, error) {
	m := &srv6Metrics{
		words:     map[srv6WordKey]*srv6Word{},
		oldSeen:   map[int]bool{},
		rederived: map[srv6Rederived]bool{},
		sidsRederived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roam_ctrl_srv6_sids_rederived_total",
			Help: "SIDs kept in records found outside their cluster's locator (it was renumbered) and re-derived in the new one (the same node, else node 0), each counted once.",
		}),
		dsrOff: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roam_ctrl_srv6_direct_return_off_total",
			Help: "Copies arrived here where a direct-return service and one without it answer from one frontend address: the address's return route takes the direct-return copy's answers home encapsulated too.",
		}),
		oldAgents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roam_ctrl_srv6_old_agents_total",
			Help: "Nodes of this cluster found with an agent from before per-node SIDs (no GET /v1/srv6/node), each counted once: the cluster then uses its node 0's SID alone.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_ctrl_srv6_refused_total",
			Help: "SRv6 path-mode steps refused, by reason (no_locator, bad_locator, no_agents, no_frontend, bad_node_sid, direct_return_not_srv6).",
		}, []string{"reason"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_ctrl_srv6_steps_total",
			Help: "SRv6 path-mode steps done: paths committed at the home by segments (1, 2), copy states set at a location (serving, draining, gone), " +
				"old copies gone at the home by how the home learnt it (gone_word: the old location said so; gone_timer: its drain budget ran out).",
		}, []string{"step"}),
	}
	for _, r := range []string{srv6NoLocator, srv6BadLocator, srv6NoAgents, srv6NoFrontend, srv6BadNodeSID, srv6NotSRv6} {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.refused, m.steps, m.oldAgents, m.sidsRederived, m.dsrOff} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register srv6 metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (e *Engine) srv6Refuse(reason string, err error) error {
	e.srv6m.refused.WithLabelValues(reason).Inc()
	return err
}

// srv6Mode reports whether d is redirected by SRv6 here.
func (e *Engine) srv6Mode(d ctrl.Descriptor) bool {
	return d.RedirectMode(e.cfg.RedirectMode) == lb.ModeSRv6
}

// srv6Resolve fixes d's redirect mode at its home's deploy: an SRv6
// service says so explicitly (its abroad copies' clusters act on it
// whatever their own default), and needs this cluster's locator.
func (e *Engine) srv6Resolve(d *ctrl.Descriptor) error {
	if !e.srv6Mode(*d) {
		if d.DirectReturn != nil && *d.DirectReturn {
			return e.srv6Refuse(srv6NotSRv6, fmt.Errorf("%w: service %s: direct_return needs redirect srv6", ErrInvalid, d.Name))
		}
		return nil
	}
	if !e.cfg.Locator.IsValid() {
		return e.srv6Refuse(srv6NoLocator, fmt.Errorf("%w: service %s: redirect srv6 needs this cluster's SRv6 locator (roam-ctrl --srv6-locator)", ErrInvalid, d.Name))
	}
	d.Redirect = lb.ModeSRv6
	// Fixed here, for the service's life: true only (false is left out,
	// so that peers from before direct_return see no field they do not
	// know).
	on := directReturn(*d) || (d.DirectReturn == nil && e.cfg.SRv6DirectReturn)
	d.DirectReturn = nil
	if on {
		d.DirectReturn = &on
	}
	return nil
}

// peerSID is sid, a SID cluster named for one of its nodes, checked to be
// inside the locator cluster announces (this cluster's own: its config);
// unset: its node 0's (a record or a peer from before per-node SIDs).
func (e *Engine) peerSID(cluster string, sid netip.Addr) (netip.Addr, error) {
	loc, err := e.clusterLocator(cluster)
	if err != nil {
		return netip.Addr{}, err
	}
	if !sid.IsValid() {
		return lb.NodeSID(loc, 0)
	}
	if !loc.Contains(sid) {
		return netip.Addr{}, e.srv6Refuse(srv6BadNodeSID, fmt.Errorf("srv6: cluster %s named the SID %s, outside its locator %s", cluster, sid, loc))
	}
	return sid, nil
}

// storedSID is peerSID for a SID a record keeps (Record.SRv6SID: the
// location's node on the home's record, the home's node on a foreign
// one): one outside the locator cluster announces now (it renumbered its
// locator since) is re-derived, not refused on every pass: the same node
// in the new locator when the SID has the shape of a node SID of a
// locator as long as the new one, else node 0 (logged and counted once
// per cluster, SID and locator: roam_ctrl_srv6_sids_rederived_total).
func (e *Engine) storedSID(cluster string, sid netip.Addr) (netip.Addr, error) {
	loc, err := e.clusterLocator(cluster)
	if err != nil {
		return netip.Addr{}, err
	}
	if !sid.IsValid() {
		return lb.NodeSID(loc, 0)
	}
	if loc.Contains(sid) {
		return sid, nil
	}
	n := nodeOf(sid, loc.Bits())
	re, err := lb.NodeSID(loc, n)
	if err != nil {
		return netip.Addr{}, err
	}
	k := srv6Rederived{cluster, sid, loc}
	e.srv6m.mu.Lock()
	seen := e.srv6m.rederived[k]
	e.srv6m.rederived[k] = true
	e.srv6m.mu.Unlock()
	if !seen {
		e.srv6m.sidsRederived.Inc()
		e.log.Warn("srv6: a stored SID is outside its cluster's locator (renumbered): the same node's SID in the new one", "cluster", cluster, "sid", sid, "locator", loc, "node", n, "now", re)
	}
	return re, nil
}

type srv6Rederived struct {
	cluster string
	sid     netip.Addr
	loc     netip.Prefix
}

// nodeOf is the node whose SID sid is in a locator of bits bits
// (lb.NodeSID's layout), or 0 when sid is no such SID.
func nodeOf(sid netip.Addr, bits int) uint16 {
	if !sid.Is6() || sid.Is4In6() || bits > 96 {
		return 0
	}
	b := sid.As16()
	var n uint16
	for i := range 16 {
		if b[(bits+i)/8]&(0x80>>((bits+i)%8)) != 0 {
			n |= 1 << (15 - i)
		}
	}
	if back, err := lb.NodeSID(netip.PrefixFrom(sid, bits).Masked(), n); err != nil || back != sid {
		return 0
	}
	return n
}

// nodeSIDs are this cluster's nodes' SIDs, node i's lb.NodeSID(locator,
// i), each checked with its agent: a node whose agent has another SID (or
// none) fails the step. While an agent is from before per-node SIDs (it
// has no GET /v1/srv6/node; logged and counted once per node), its SID is
// unknown and it had node 0's, as did every node then: the cluster uses
// node 0's SID alone, as before.
func (e *Engine) nodeSIDs(ctx context.Context) ([]netip.Addr, error) {
	if !e.cfg.Locator.IsValid() {
		return nil, e.srv6Refuse(srv6NoLocator, errors.New("srv6: this cluster has no SRv6 locator (roam-ctrl --srv6-locator)"))
	}
	a, err := e.srv6Agents()
	if err != nil {
		return nil, err
	}
	got, err := a.SRv6SIDs(ctx)
	if err != nil {
		return nil, err
	}
	if len(got) == 0 {
		return nil, e.srv6Refuse(srv6NoAgents, errors.New("srv6: this cluster has no nodes"))
	}
	want := make([]netip.Addr, len(got))
	var bad []error
	old := false
	for i := range got {
		if want[i], err = lb.NodeSID(e.cfg.Locator, uint16(i)); err != nil {
			return nil, err
		}
		if got[i].Old {
			old = true
			e.srv6OldAgent(i)
			continue
		}
		if got[i].SID != want[i] {
			bad = append(bad, fmt.Errorf("node %d has the SID %v, its place allocates %s (roam-agent --srv6-sid)", i, got[i].SID, want[i]))
		}
	}
	if len(bad) > 0 {
		return nil, e.srv6Refuse(srv6BadNodeSID, fmt.Errorf("srv6: %w", errors.Join(bad...)))
	}
	if old {
		return want[:1], nil
	}
	return want, nil
}

// srv6OldAgent notes, once, that node i's agent is from before per-node
// SIDs.
func (e *Engine) srv6OldAgent(i int) {
	e.srv6m.mu.Lock()
	seen := e.srv6m.oldSeen[i]
	e.srv6m.oldSeen[i] = true
	e.srv6m.mu.Unlock()
	if !seen {
		e.srv6m.oldAgents.Inc()
		e.log.Warn("srv6: node's agent is from before per-node SIDs (no GET /v1/srv6/node): this cluster uses its node 0's SID alone until every agent is upgraded", "node", i)
	}
}

// pickSID is the SID of sids that service name's packets go to: by its
// name's hash, so a service keeps its node and services spread.
func pickSID(sids []netip.Addr, name string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(name))
	return sids[h.Sum32()%uint32(len(sids))]
}

// srv6Foreign is what a destination needs for r's copy: the home's
// frontends and the SID of the home's node its answers go to (none unless
// r's service is redirected by SRv6). The home picks one of its nodes; a
// mover passes on the home's SID it was given.
func (e *Engine) srv6Foreign(ctx context.Context, r ctrl.Record) ([]lb.Frontend, netip.Addr, error) {
	if !e.srv6Mode(r.Service) {
		return nil, netip.Addr{}, nil
	}
	if r.Kind == ctrl.KindForeign {
		home, err := e.storedSID(r.Home, r.SRv6SID)
		if err != nil {
			return nil, netip.Addr{}, err
		}
		return r.SRv6Frontends, home, nil
	}
	sids, err := e.nodeSIDs(ctx)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	return r.Frontends, homeSID(sids, r.Frontends), nil
}

// homeSID is the SID of the home's node the answers of a copy of a
// service with frontends fs go back to: picked by the frontends' (lowest)
// address, not the service. A location chooses the return route by the
// answer's source address alone (one rule per address: agent
// dataplane.SRv6Returns), and the services of a home share its frontend
// address (roam-ctrl --frontend-addr) and differ by port, so they must
// name the same node; by service they named different ones, of which the
// location's kernel followed whichever rule came first.
func homeSID(sids []netip.Addr, fs []lb.Frontend) netip.Addr {
	var key netip.Addr
	for _, f := range fs {
		if a := f.Addr.Unmap(); !key.IsValid() || a.Less(key) {
			key = a
		}
	}
	return pickSID(sids, key.String())
}

// clusterLocator is the locator cluster announces (this cluster's own:
// its config).
func (e *Engine) clusterLocator(cluster string) (netip.Prefix, error) {
	loc := e.cfg.Locator
	if cluster != e.cfg.ClusterID {
		loc = netip.Prefix{}
		if e.cfg.Hellos != nil {
			for _, h := range e.cfg.Hellos() {
				if h.ClusterID == cluster {
					loc = h.Locator
				}
			}
		}
	}
	if !loc.IsValid() {
		return netip.Prefix{}, e.srv6Refuse(srv6NoLocator, fmt.Errorf("srv6: cluster %s announces no SRv6 locator (roam-ctrl --srv6-locator), or is not in the meta-orchestrator's view", cluster))
	}
	if err := lb.ValidateLocator(loc); err != nil {
		return netip.Prefix{}, e.srv6Refuse(srv6BadLocator, fmt.Errorf("srv6: cluster %s: %w", cluster, err))
	}
	return loc, nil
}

// rerouteTarget is the target the home stages for m: an SRv6 path for an
// SRv6 service going abroad ([old, new] when it runs abroad now), else
// redirectTo as in NAT mode.
func (e *Engine) rerouteTarget(m *ctrl.Migration, r ctrl.Record) (func(int) lb.Target, error) {
	if !e.srv6Mode(r.Service) || m.To == e.cfg.ClusterID {
		return redirectTo(m.ToEndpoints), nil
	}
	to, err := e.peerSID(m.To, m.ToSID)
	if err != nil {
		return nil, err
	}
	t := lb.SRv6(to)
	if r.Kind == ctrl.KindAbroad && r.Cluster != m.To {
		from, err := e.storedSID(r.Cluster, r.SRv6SID)
		if err != nil {
			return nil, err
		}
		t = lb.SRv6(from, to)
	}
	return func(int) lb.Target { return t }, nil
}

// recordTarget is where r's frontends must point (the reconciler's
// desired state); ok is false when it cannot be said now (an SRv6 location
// whose locator the view lacks): the nodes are then left as they are.
func (e *Engine) recordTarget(r ctrl.Record) (want func(int) lb.Target, ok bool) {
	if r.Kind != ctrl.KindAbroad || !e.srv6Mode(r.Service) {
		return target(r), true
	}
	sid, err := e.storedSID(r.Cluster, r.SRv6SID)
	if err != nil {
		e.log.Warn("reconcile: srv6 path unknown, nodes left as they are", "service", r.Service.Name, "err", err)
		return nil, false
	}
	t := lb.SRv6(sid)
	return func(int) lb.Target { return t }, true
}

// agrees reports whether a node's active target is the desired one. An SRv6
// path [old, want] agrees with [want]: the old location forwards what it
// no longer delivers, and the home shortens the path once the old copy is
// gone (srv6Settle).
func agrees(active, want lb.Target) bool {
	if active == want {
		return true
	}
	as, ws := active.Segments(), want.Segments()
	return active.Kind == lb.TargetSRv6 && want.Kind == lb.TargetSRv6 && len(ws) == 1 && len(as) == 2 && as[1] == ws[0]
}

// srv6Moved is the home's end of a move by SRv6 away from an abroad
// location, after its commit: of [old, new] (a move on between two abroad
// locations), or of local (a move back home). The old location drains its
// copy itself (it keeps the flows it has; the home's conntrack does not
// see them, so its drain would find none at once and its "drained" would
// make the old location kill its copy under them): the home sends no
// "drained". Once the old location says its copy is gone (SRv6Gone), or
// else once it must be gone (its drain budget, DrainTimeout, has run out
// at the mover), the home commits [new]; after a move home it commits
// local again on that word, which ends the data plane's hold of the
// previous path at once (without the word, the hold runs out by itself:
// dataplane SRv6Config.PreviousHold). It reports whether it took over
// from drainForMover.
func (e *Engine) srv6Moved(ctx context.Context, m *ctrl.Migration, r ctrl.Record, fs []lb.Frontend) bool {
	if !e.srv6Mode(r.Service) || r.Kind != ctrl.KindAbroad || r.Cluster == m.To {
		return false
	}
	home := m.To == e.cfg.ClusterID
	if !home {
		e.srv6m.steps.WithLabelValues("home_path_2").Inc()
	}
	word, forget := e.srv6ExpectGone(m.Service, m.FromEpoch, r.Cluster)
	sctx, cancel := detached(ctx, e.cfg.DrainTimeout+e.cfg.CallTimeout+2*time.Second)
	go func() {
		defer cancel()
		defer forget()
		how := "gone_word"
		select {
		case <-word:
		case <-time.After(e.cfg.DrainTimeout + time.Second):
			if home {
				return // the data plane's hold ends by itself
			}
			how = "gone_timer"
		case <-sctx.Done():
			return
		}
		e.srv6m.steps.WithLabelValues(how).Inc()
		if err := e.srv6Settle(sctx, m); err != nil {
			e.log.Warn("srv6: leave the old location off the path (the reconciler keeps it meanwhile)", "service", m.Service, "err", err)
		}
	}()
	return true
}

// srv6ExpectGone registers a move of name from cluster from, whose copy
// there is of epoch epoch, as waiting for that cluster's word that the
// copy is gone: the channel is closed when it comes. forget unregisters it.
func (e *Engine) srv6ExpectGone(name string, epoch ctrl.Epoch, from string) (<-chan struct{}, func()) {
	k := srv6WordKey{name, epoch}
	w := &srv6Word{from: from, ch: make(chan struct{})}
	e.srv6m.mu.Lock()
	e.srv6m.words[k] = w
	e.srv6m.mu.Unlock()
	return w.ch, func() {
		e.srv6m.mu.Lock()
		if e.srv6m.words[k] == w {
			delete(e.srv6m.words, k)
		}
		e.srv6m.mu.Unlock()
	}
}

// SRv6Gone is a location's word that its copy of name (homed here) of
// epoch is gone: a move from there waiting for it leaves that location off
// the path now (srv6Moved). Only the cluster the move left may say it; a
// word no move waits for (late, or after a restart here) changes nothing.
func (e *Engine) SRv6Gone(ctx context.Context, from ctrl.Caller, name string, epoch ctrl.Epoch) error {
	r, err := e.Get(name)
	if err != nil {
		return fmt.Errorf("srv6 gone %s: %w", name, err)
	}
	if r.Kind == ctrl.KindForeign || r.Home != e.cfg.ClusterID {
		return fmt.Errorf("srv6 gone %s: %w: this cluster is not its home", name, ErrConflict)
	}
	e.srv6m.mu.Lock()
	defer e.srv6m.mu.Unlock()
	w, ok := e.srv6m.words[srv6WordKey{name, epoch}]
	if !ok {
		return nil
	}
	if w.from != from.Cluster {
		return fmt.Errorf("srv6 gone %s: %w: its copy of %s was at %s, not %s", name, ErrConflict, epoch, w.from, from.Cluster)
	}
	select {
	case <-w.ch:
	default:
		close(w.ch)
		e.log.Info("srv6: old location says its copy is gone", "service", name, "at", from.Cluster, "epoch", epoch)
	}
	return nil
}

// srv6Settle commits where m's service runs now (the path [new], or local)
// if the record still says m's copy is where it runs.
func (e *Engine) srv6Settle(ctx context.Context, m *ctrl.Migration) error {
	defer e.lock(m.Service)()
	r, err := e.st.Record(m.Service)
	if err != nil {
		return err
	}
	if r.Kind == ctrl.KindForeign || r.Cluster != m.To || r.Epoch != m.Epoch {
		return nil // moved again since: that move owns the path
	}
	want, ok := e.recordTarget(r)
	if !ok {
		return errors.New("the new location's SID is unknown")
	}
	if err := e.program(ctx, r.Frontends, want); err != nil {
		return err
	}
	if r.Kind == ctrl.KindLocal {
		e.srv6m.steps.WithLabelValues("home_previous_end").Inc()
		e.log.Info("srv6: previous path ended (the old copy is gone)", "service", m.Service)
		return nil
	}
	e.srv6m.steps.WithLabelValues("home_path_1").Inc()
	e.log.Info("srv6: path shortened to the new location", "service", m.Service, "target", want(0))
	return nil
}

func (e *Engine) srv6Agents() (srv6Agents, error) {
	a, ok := e.cfg.Agents.(srv6Agents)
	if !ok || e.cfg.Agents == nil {
		return nil, e.srv6Refuse(srv6NoAgents, errors.New("srv6: this cluster's agents cannot run SRv6 copies"))
	}
	return a, nil
}

// srv6Arrive makes this cluster a location of req's SRv6 service: the
// return route to the home's SID on every node (with direct return: none,
// so the copy answers through the node's own routes), then the copy
// serving.
// It returns the SID of the node the home's path is to name.
func (e *Engine) srv6Arrive(ctx context.Context, req ctrl.ForeignRequest) (netip.Addr, error) {
	if req.Service.Redirect != lb.ModeSRv6 {
		return netip.Addr{}, nil
	}
	if len(req.Frontends) == 0 {
		return netip.Addr{}, e.srv6Refuse(srv6NoFrontend, fmt.Errorf("%w: srv6 copy of %s: the home named no frontends", ErrInvalid, req.Service.Name))
	}
	for _, f := range req.Frontends {
		if err := f.Validate(); err != nil {
			return netip.Addr{}, e.srv6Refuse(srv6NoFrontend, fmt.Errorf("%w: srv6 copy of %s: %w", ErrInvalid, req.Service.Name, err))
		}
	}
	home, err := e.peerSID(req.Home, req.HomeSID)
	if err != nil {
		return netip.Addr{}, err
	}
	sids, err := e.nodeSIDs(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := e.srv6Agents()
	if err != nil {
		return netip.Addr{}, err
	}
	// A direct-return copy installs no return route and removes none: the
	// route of the address may be another service's of the same home (one
	// rule per address), and an agent restarted no longer knows which
	// services share it, so a removal would take a route still needed.
	e.srv6SharedReturn(req)
	if !directReturn(req.Service) {
		if err := a.SetSRv6Returns(ctx, req.Frontends, home, false); err != nil {
			return netip.Addr{}, err
		}
	}
	if err := a.SetSRv6Copies(ctx, req.Frontends, dataplane.SRv6Serving); err != nil {
		return netip.Addr{}, err
	}
	e.srv6m.steps.WithLabelValues("serving").Inc()
	return pickSID(sids, req.Service.Name), nil
}

// srv6SharedReturn logs and counts a direct-return copy arriving where
// a copy of another service without it answers from the same frontend
// address (or the other way round): the kernel picks the return route by
// source address only, so the address's route, there for the other
// service, takes the direct-return copy's answers home encapsulated too.
func (e *Engine) srv6SharedReturn(req ctrl.ForeignRequest) {
	recs, err := e.st.Records()
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.Kind != ctrl.KindForeign || r.Service.Name == req.Service.Name || directReturn(r.Service) == directReturn(req.Service) {
			continue
		}
		for _, f := range r.SRv6Frontends {
			if slices.ContainsFunc(req.Frontends, func(g lb.Frontend) bool { return g.Addr.Unmap() == f.Addr.Unmap() }) {
				dsr, other := req.Service.Name, r.Service.Name
				if !directReturn(req.Service) {
					dsr, other = other, dsr
				}
				e.srv6m.dsrOff.Inc()
				e.log.Warn("srv6: direct return off here: the frontend address has the return route of a service without it", "service", dsr, "route_of", other, "addr", f.Addr)
				return
			}
		}
	}
}

// directReturn reports whether d's copies answer their clients directly.
func directReturn(d ctrl.Descriptor) bool { return d.DirectReturn != nil && *d.DirectReturn }

// srv6Depart stops r's copy here (del: the backend's graceful stop) as an
// SRv6 location: draining first (the copy keeps the flows it has, new ones
// go on to the next segment), gone once the copy has stopped or half the
// drain budget has passed (a copy still answering a UDP flow stops only
// once that flow goes elsewhere), then the return route goes (with
// direct return: the copy installed none, and removes none).
func (e *Engine) srv6Depart(ctx context.Context, r ctrl.Record, del func(context.Context) error) error {
	fs := r.SRv6Frontends
	if r.Kind != ctrl.KindForeign || len(fs) == 0 {
		return del(ctx)
	}
	a, err := e.srv6Agents()
	if err != nil {
		return errors.Join(err, del(ctx))
	}
	cctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := a.SetSRv6Copies(cctx, fs, dataplane.SRv6Draining); err != nil {
		e.log.Warn("srv6: copy draining", "service", r.Service.Name, "err", err)
	} else {
		e.srv6m.steps.WithLabelValues("draining").Inc()
	}
	done := make(chan error, 1)
	go func() { done <- del(ctx) }()
	var derr error
	stopped := false
	select {
	case derr = <-done:
		stopped = true
	case <-time.After(e.cfg.DrainTimeout / 2):
	case <-ctx.Done():
	}
	var errs []error
	if err := a.SetSRv6Copies(cctx, fs, dataplane.SRv6Gone); err != nil {
		errs = append(errs, err)
	} else {
		e.srv6m.steps.WithLabelValues("gone").Inc()
		// The home may leave us off its path now (else at its timer).
		if e.cfg.Peers != nil {
			if err := e.cfg.Peers.SRv6Gone(cctx, e.urlOf(r.Home, r.HomeURL), r.Service.Name, r.Epoch); err != nil {
				e.log.Warn("srv6: tell the home the copy is gone (it shortens its path at its timer)", "service", r.Service.Name, "err", err)
			}
		}
	}
	if !stopped {
		derr = <-done
	}
	if home, err := e.storedSID(r.Home, r.SRv6SID); err == nil && !directReturn(r.Service) {
		if err := a.SetSRv6Returns(cctx, fs, home, true); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		e.log.Warn("srv6: copy gone", "service", r.Service.Name, "err", errors.Join(errs...))
	}
	return derr
}
