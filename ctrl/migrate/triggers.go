package migrate

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/meta"
)

// This file holds the zero-touch triggers: the home of a service that
// states a network need (Descriptor.NeedMbps, Constraints.MaxRTTMs) moves
// it by itself, with a real placement request, when
//
//   - network-change: the path from the home to where it runs fell below
//     the need, confirmed by Confirm fresh measurements in a row (a
//     measurement is fresh when either end of the path took it: the
//     home's own, or a new one the other end reports in its hello);
//   - better-placement: another place is better (a tier the policy ranks
//     higher, or the same tier with a path better by Margin) and meets the
//     need with Margin to spare, and has stayed so for Hold.
//
// Hysteresis: leaving needs the path below the need, coming back needs it
// above need*(1+Margin), so a measurement that wanders around the need
// moves a service at most once. A cooldown follows every move. Links that
// are down are the fail-safe's (failsafe.go), not the triggers'.

// TriggerConfig tunes the triggers.
type TriggerConfig struct {
	// Confirm is how many fresh measurements in a row must be below the
	// need (default 2).
	Confirm int
	// Hold is how long a better place must stay better (default 5s).
	Hold time.Duration
	// Cooldown is the least time between two moves of one service
	// (default: Config.PolicyCooldown).
	Cooldown time.Duration
	// Margin is the fraction by which a better place must beat the need
	// (and, in the same tier, the current path's bandwidth) (default 0.3).
	Margin float64
	// MaxLossPct is the loss above which a path is below any need
	// (default 20).
	MaxLossPct float64
	// Policy ranks tiers as the MO's does (default meta.TierAware); a
	// tier it rules out ranks below every other (the home as fallback).
	Policy meta.Policy
}

func (c *TriggerConfig) defaults(cooldown time.Duration) {
	if c.Confirm <= 0 {
		c.Confirm = 2
	}
	if c.Hold <= 0 {
		c.Hold = 5 * time.Second
	}
	if c.Cooldown <= 0 {
		c.Cooldown = cooldown
	}
	if c.Margin <= 0 {
		c.Margin = 0.3
	}
	if c.MaxLossPct <= 0 {
		c.MaxLossPct = 20
	}
	if c.Policy == nil {
		c.Policy = meta.TierAware{}
	}
}

// Measured is a link this cluster measured itself, and when (zero: a
// figure given from outside, such as --links-file: every look at it
// counts as a measurement).
type Measured struct {
	meta.Link
	At time.Time
}

// Path is what the trigger knows of the path from the home to a cluster.
type Path struct {
	Cluster string
	Tier    string
	// Local is the home itself: users reach it without crossing a link.
	Local bool
	// Known is false when nothing is measured toward it.
	Known bool
	Link  meta.Link
	// At is when the home measured the path itself (zero: it did not, or
	// the figure was given from outside, such as --links-file: then
	// every look counts as a measurement unless PeerSamples says more).
	At time.Time
	// PeerSamples is how many measurements the other end has taken of
	// its direction (meta.Link.Samples in its hello; 0: not said). A
	// change means a new one: the path is measured from both ends, so
	// a change is confirmed by whichever end measures first.
	PeerSamples uint64
	// OwnLink is the home's own measurement (HasOwn: taken by the home,
	// with its time), PeerLink the other end's (HasPeer: it says its
	// Samples). Link is the worse of the two. Each new measurement is
	// judged by itself: a stale low figure of one end must not make
	// every new one of the other end count as low too.
	OwnLink, PeerLink meta.Link
	HasOwn, HasPeer   bool
}

func (p Path) String() string {
	switch {
	case p.Local:
		return p.Cluster + " (home, local)"
	case !p.Known:
		return p.Cluster + " (not measured)"
	case !p.Link.Up:
		return p.Cluster + " (down)"
	}
	return fmt.Sprintf("%s %.2f Mbit/s %.2f ms loss %.0f%%", p.Cluster, p.Link.BandwidthMbps, p.Link.RTTMs, p.Link.LossPct)
}

// Need is what a service asks of the path from its home.
type Need struct {
	Mbps     float64
	MaxRTTMs float64
}

// NeedOf is d's need (zero: the service is placed by hand only).
func NeedOf(d ctrl.Descriptor) Need {
	return Need{Mbps: max(d.NeedMbps, d.Constraints.MinBandwidthMbps), MaxRTTMs: d.Constraints.MaxRTTMs}
}

// IsZero reports whether n asks nothing.
func (n Need) IsZero() bool { return n.Mbps <= 0 && n.MaxRTTMs <= 0 }

// Decision is what the trigger says about one service.
type Decision struct {
	Move   bool
	Reason meta.Reason
	// Why is the measurement behind the decision, for the migration's
	// record and the log.
	Why string
	// Toward is the place the trigger saw as better (the MO decides).
	Toward string
}

type trigState struct {
	below       int
	lastSample  time.Time
	lastPeerN   uint64
	sampled     bool
	betterOf    string
	betterSince time.Time
	lastMove    time.Time
}

// Trigger decides, from the paths the home measured, when a service must
// move. It keeps per-service state; Decide is given the time, so tests
// drive it with a fake clock.
type Trigger struct {
	cfg TriggerConfig
	mu  sync.Mutex
	st  map[string]*trigState
}

// NewTrigger builds a trigger (cfg's zero fields take their defaults, the
// cooldown 30s).
func NewTrigger(cfg TriggerConfig) *Trigger {
	cfg.defaults(30 * time.Second)
	return &Trigger{cfg: cfg, st: map[string]*trigState{}}
}

// Config is the trigger's configuration with defaults.
func (t *Trigger) Config() TriggerConfig { return t.cfg }

func (t *Trigger) rank(tier string) int {
	r, _, ok := t.cfg.Policy.Rank(tier, &meta.ServiceDescriptor{})
	if !ok {
		return -1
	}
	return r
}

// below reports whether p fails the need, and says how.
func (t *Trigger) below(p Path, n Need) (bool, string) {
	if p.Local {
		return false, ""
	}
	l := p.Link
	switch {
	case n.Mbps > 0 && l.BandwidthMbps < n.Mbps:
		return true, fmt.Sprintf("bandwidth %.2f Mbit/s < need %.2f", l.BandwidthMbps, n.Mbps)
	case n.MaxRTTMs > 0 && l.RTTMs > n.MaxRTTMs:
		return true, fmt.Sprintf("rtt %.2f ms > bound %.2f", l.RTTMs, n.MaxRTTMs)
	case l.LossPct > t.cfg.MaxLossPct:
		return true, fmt.Sprintf("loss %.0f%% > %.0f%%", l.LossPct, t.cfg.MaxLossPct)
	}
	return false, ""
}

// roomy reports whether p meets the need with the margin to spare.
func (t *Trigger) roomy(p Path, n Need) bool {
	if p.Local {
		return true
	}
	if !p.Known || !p.Link.Up {
		return false
	}
	l := p.Link
	m := 1 + t.cfg.Margin
	return (n.Mbps <= 0 || l.BandwidthMbps >= n.Mbps*m) &&
		(n.MaxRTTMs <= 0 || l.RTTMs*m <= n.MaxRTTMs) &&
		l.LossPct <= t.cfg.MaxLossPct/2
}

// better reports whether candidate c beats cur: a higher rank, or the same
// rank with a path better by the margin (the home's local path does not
// count here: it wins only by rank).
func (t *Trigger) better(c, cur Path) bool {
	rc, ru := t.rank(c.Tier), t.rank(cur.Tier)
	if rc != ru {
		return rc > ru
	}
	if c.Local || cur.Local || !cur.Known {
		return false
	}
	return c.Link.BandwidthMbps >= cur.Link.BandwidthMbps*(1+t.cfg.Margin)
}

// Moved records that svc was moved at now (the cooldown starts).
func (t *Trigger) Moved(svc string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.state(svc)
	s.lastMove = now
	s.below, s.betterOf, s.betterSince = 0, "", time.Time{}
}

func (t *Trigger) belowCount(svc string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state(svc).below
}

// Forget drops svc's state.
func (t *Trigger) Forget(svc string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.st, svc)
}

func (t *Trigger) state(svc string) *trigState {
	s := t.st[svc]
	if s == nil {
		s = &trigState{}
		t.st[svc] = s
	}
	return s
}

// Decide looks at svc, running where cur leads, with the candidates'
// paths (cur among them or not), at now. lastMove is the service's latest
// move as its record says (zero: none).
func (t *Trigger) Decide(now time.Time, svc string, need Need, cur Path, cands []Path, lastMove time.Time) Decision {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.state(svc)
	if lastMove.After(s.lastMove) {
		s.lastMove = lastMove
	}
	if need.IsZero() {
		return Decision{}
	}
	cooling := !s.lastMove.IsZero() && now.Sub(s.lastMove) < t.cfg.Cooldown

	// Below the need: count fresh measurements in a row.
	if !cur.Local {
		if !cur.Known || !cur.Link.Up {
			s.below = 0 // down is the fail-safe's
		} else {
			if !cur.HasOwn && !cur.HasPeer && !cur.At.IsZero() {
				cur.OwnLink, cur.HasOwn = cur.Link, true // a path built by hand: At is the home's
			}
			var fresh []meta.Link
			switch {
			case !s.sampled || (!cur.HasOwn && !cur.HasPeer):
				// The first look, or figures without a time (given
				// from outside): every look counts, the worse end.
				fresh = append(fresh, cur.Link)
			default:
				if cur.HasPeer && cur.PeerSamples != s.lastPeerN {
					fresh = append(fresh, cur.PeerLink)
				}
				if cur.HasOwn && !cur.At.Equal(s.lastSample) {
					fresh = append(fresh, cur.OwnLink)
				}
			}
			s.lastSample, s.lastPeerN, s.sampled = cur.At, cur.PeerSamples, true
			for _, l := range fresh {
				p := cur
				p.Link = l
				if b, _ := t.below(p, need); b {
					s.below++
				} else {
					s.below = 0
				}
			}
		}
		if s.below >= t.cfg.Confirm && !cooling {
			_, how := t.below(cur, need)
			return Decision{Move: true, Reason: meta.ReasonNetworkChange,
				Why: fmt.Sprintf("path from the home to %s: %s (%d measurements in a row)", cur.Cluster, how, s.below)}
		}
	}

	// A better place, for the hold time.
	var best *Path
	for i := range cands {
		c := &cands[i]
		if c.Cluster == cur.Cluster || !t.roomy(*c, need) || !t.better(*c, cur) {
			continue
		}
		if best == nil || t.better(*c, *best) || (!t.better(*best, *c) && c.Link.BandwidthMbps > best.Link.BandwidthMbps) {
			best = c
		}
	}
	if best == nil {
		s.betterOf, s.betterSince = "", time.Time{}
		return Decision{}
	}
	if best.Cluster != s.betterOf {
		s.betterOf, s.betterSince = best.Cluster, now
	}
	held := now.Sub(s.betterSince)
	if held < t.cfg.Hold || cooling {
		return Decision{}
	}
	return Decision{Move: true, Reason: meta.ReasonBetterPlacement, Toward: best.Cluster,
		Why: fmt.Sprintf("%s better than %s for %.1f s", best, cur, held.Seconds())}
}

// pathFrom builds the path from here (the home) to cluster from this
// cluster's own measurements and, as the other direction, the cluster's
// hello: the path is as good as its worse direction.
func pathFrom(self, cluster string, own map[string]Measured, hs []meta.Hello) Path {
	p := Path{Cluster: cluster}
	var peerLink *meta.Link
	for i := range hs {
		h := &hs[i]
		if h.ClusterID == cluster {
			p.Tier = h.Tier
			if l, ok := h.LinkTo(self); ok {
				peerLink = &l
			}
		}
	}
	if cluster == self {
		p.Local, p.Known = true, true
		p.Link = meta.Link{Peer: cluster, BandwidthMbps: math.Inf(1), Up: true}
		return p
	}
	if m, ok := own[cluster]; ok {
		p.Known, p.Link, p.At = true, m.Link, m.At
		p.OwnLink, p.HasOwn = m.Link, !m.At.IsZero()
		if peerLink != nil && peerLink.Up && m.Up {
			p.Link.BandwidthMbps = min(p.Link.BandwidthMbps, peerLink.BandwidthMbps)
			p.Link.RTTMs = max(p.Link.RTTMs, peerLink.RTTMs)
			p.Link.LossPct = max(p.Link.LossPct, peerLink.LossPct)
			if !m.At.IsZero() && peerLink.Samples > 0 {
				p.PeerLink, p.HasPeer, p.PeerSamples = *peerLink, true, peerLink.Samples
			} else {
				// A peer that does not count its measurements: judge
				// ours with its figure, as the path.
				p.OwnLink = p.Link
			}
		}
		return p
	}
	if peerLink != nil {
		p.Known, p.Link = true, *peerLink
		if peerLink.Samples > 0 {
			p.PeerLink, p.HasPeer, p.PeerSamples = *peerLink, true, peerLink.Samples
		}
	}
	return p
}

// Watched are the clusters whose path from here a better-placement move
// waits on: for each service this cluster owns that states a network
// need, the clusters (hs: the others' hellos) of a tier the policy ranks
// above the one it runs in, at most n, best tier and least loaded first.
// The prober measures them as often as the paths in use (hot), so that a
// better place restored is seen within a second or two, not at the
// candidates' turn (every 20 s by default); the bound keeps that cost
// fixed however many clusters there are.
func (e *Engine) Watched(hs []meta.Hello, n int) []string {
	recs, err := e.st.Records()
	if err != nil || n <= 0 {
		return nil
	}
	self := e.cfg.ClusterID
	tierOf := map[string]string{self: e.cfg.Tier}
	for _, h := range hs {
		tierOf[h.ClusterID] = h.Tier
	}
	floor := math.MaxInt // the lowest rank a service of ours runs at
	for _, r := range recs {
		if (r.Kind != ctrl.KindAbroad && r.Kind != ctrl.KindLocal) || NeedOf(r.Service).IsZero() {
			continue
		}
		where := self
		if r.Kind == ctrl.KindAbroad {
			where = r.Cluster
		}
		if t, ok := tierOf[where]; ok {
			floor = min(floor, e.trig.rank(t))
		}
	}
	if floor == math.MaxInt {
		return nil
	}
	var above []meta.Hello
	for _, h := range hs {
		if h.ClusterID != self && e.trig.rank(h.Tier) > floor {
			above = append(above, h)
		}
	}
	slices.SortFunc(above, func(a, b meta.Hello) int {
		if ra, rb := e.trig.rank(a.Tier), e.trig.rank(b.Tier); ra != rb {
			return rb - ra
		}
		if la, lb := a.Capacity.Load(), b.Capacity.Load(); la != lb {
			return cmp.Compare(la, lb)
		}
		return strings.Compare(a.ClusterID, b.ClusterID)
	})
	out := make([]string, 0, min(n, len(above)))
	for _, h := range above[:min(n, len(above))] {
		out = append(out, h.ClusterID)
	}
	return out
}

// Policy runs the triggers over the services this cluster owns that state
// a network need. The controller calls it every PolicyInterval.
func (e *Engine) Policy(ctx context.Context) {
	if e.cfg.Hellos == nil && e.cfg.Measured == nil {
		return
	}
	var hs []meta.Hello
	if e.cfg.Hellos != nil {
		hs = e.cfg.Hellos()
	}
	own := map[string]Measured{}
	if e.cfg.Measured != nil {
		for _, m := range e.cfg.Measured() {
			own[m.Peer] = m
		}
	}
	recs, err := e.st.Records()
	if err != nil {
		e.log.Warn("policy: read records", "err", err)
		return
	}
	self := e.cfg.ClusterID
	for _, r := range recs {
		need := NeedOf(r.Service)
		if (r.Kind != ctrl.KindAbroad && r.Kind != ctrl.KindLocal) || need.IsZero() {
			continue
		}
		where := self
		if r.Kind == ctrl.KindAbroad {
			where = r.Cluster
		}
		cur := pathFrom(self, where, own, hs)
		if where != self && cur.Tier == "" {
			continue // no hello from where it runs: the fail-safe's business
		}
		if where == self {
			cur.Tier = e.cfg.Tier
		}
		cands := []Path{pathFrom(self, self, own, hs)}
		cands[0].Tier = e.cfg.Tier
		for _, h := range hs {
			if h.ClusterID != self {
				cands = append(cands, pathFrom(self, h.ClusterID, own, hs))
			}
		}
		var last time.Time
		if r.LastMigration != nil {
			last = r.LastMigration.Started
		}
		now := time.Now()
		d := e.trig.Decide(now, r.Service.Name, need, cur, cands, last)
		e.log.Debug("trigger: look", "service", r.Service.Name, "cur", cur.String(), "own", own[where].Link, "at", cur.At.Format("15:04:05.000"), "below", e.trig.belowCount(r.Service.Name), "move", d.Move)
		if !d.Move {
			continue
		}
		e.trig.Moved(r.Service.Name, now)
		e.triggered.WithLabelValues(string(d.Reason)).Inc()
		e.log.Info("trigger: moving service", "service", r.Service.Name, "reason", d.Reason, "why", d.Why, "toward", d.Toward)
		if _, err := e.Migrate(ctx, r.Service.Name, ctrl.MigrateRequest{Reason: string(d.Reason), Trigger: d.Why}); err != nil {
			e.log.Warn("trigger: migration", "service", r.Service.Name, "err", err)
		}
	}
}

// placementText is a placement reply in one line: the choice, then why
// each other cluster ranked lower or was ruled out.
func placementText(rep meta.PlacementReply) string {
	var b strings.Builder
	if rep.Destination != nil {
		fmt.Fprintf(&b, "%s: %s", rep.Destination.ClusterID, rep.Reason)
	} else {
		b.WriteString("none: " + rep.NoPlacement)
	}
	for _, a := range rep.Alternatives {
		fmt.Fprintf(&b, "; %s: %s", a.ClusterID, a.Why)
	}
	for _, f := range rep.Filtered {
		fmt.Fprintf(&b, "; %s: %s", f.ClusterID, f.Why)
	}
	if rep.Local {
		b.WriteString(" (decided from cached hellos)")
	}
	return b.String()
}
