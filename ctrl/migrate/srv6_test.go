package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// srv6FakeAgents are a cluster's fake agents that also take the SRv6
// location calls, recorded as actions. Node i has the SID its place
// allocates in loc, unless sids says otherwise.
type srv6FakeAgents struct {
	*fakeAgents
	loc  netip.Prefix
	sids map[int]netip.Addr
	old  map[int]bool // nodes whose agent is from before per-node SIDs
	ret  *fakeReturns
}

// fakeReturns models the agents' return routes (dataplane.SRv6Returns):
// one rule per frontend address in the kernel (rules, kept across an
// agent's restart), the frontends sharing it in the agent's memory (mem,
// emptied by restart); a frontend's removal leaves the rule while another
// frontend of the address is known, else takes it.
type fakeReturns struct {
	mu    sync.Mutex
	rules map[netip.Addr]netip.Addr
	mem   map[lb.Frontend]bool
}

func (r *fakeReturns) set(fs []lb.Frontend, sid netip.Addr, remove bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range fs {
		a := f.Addr.Unmap()
		if remove {
			delete(r.mem, f)
		} else {
			r.mem[f], r.rules[a] = true, sid
		}
		known := false
		for g := range r.mem {
			known = known || g.Addr.Unmap() == a
		}
		if !known {
			delete(r.rules, a)
		}
	}
}

func (r *fakeReturns) restart() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.mem)
}

func (r *fakeReturns) rule(a netip.Addr) (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sid, ok := r.rules[a.Unmap()]
	return sid, ok
}

var _ srv6Agents = agentapi.Group(nil)

func (a srv6FakeAgents) SRv6SIDs(ctx context.Context) ([]agentapi.NodeSID, error) {
	out := make([]agentapi.NodeSID, len(a.nodes))
	for i := range out {
		if a.old[i] {
			out[i].Old = true
			continue
		}
		sid, err := lb.NodeSID(a.loc, uint16(i))
		if err != nil {
			return nil, err
		}
		if s, ok := a.sids[i]; ok {
			sid = s
		}
		out[i].SID = sid
	}
	return out, nil
}

func (a srv6FakeAgents) SetSRv6Copies(ctx context.Context, fs []lb.Frontend, st dataplane.SRv6State) error {
	a.acts.add("srv6 %s copies %v %s", a.cluster, fs, st)
	return nil
}

func (a srv6FakeAgents) SetSRv6Returns(ctx context.Context, fs []lb.Frontend, sid netip.Addr, remove bool) error {
	a.acts.add("srv6 %s returns %v -> %s remove=%v", a.cluster, fs, sid, remove)
	if a.ret != nil {
		a.ret.set(fs, sid, remove)
	}
	return nil
}

func testLocator(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfc, 0, 0, 0, 0, byte(i)}), 48)
}

// testSID is the SID of the node of cluster i (two nodes) that the
// service "web" goes to: node 1 (fnv-1a of "web" is odd; see
// TestSRv6NodeSIDs).
func testSID(t *testing.T, i int) netip.Addr {
	t.Helper()
	a, err := lb.NodeSID(testLocator(i), 1)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// srv6World is a world whose clusters redirect by SRv6 and announce
// locators (cluster i the i-th, 1-based), except those in noLocator.
func srv6World(t *testing.T, noLocator map[string]bool, ids ...string) *world {
	t.Helper()
	index := map[string]int{}
	for i, id := range ids {
		index[id] = i + 1
	}
	w := newWorld(t, ids...)
	rets := map[string]*fakeReturns{}
	for _, id := range ids {
		rets[id] = &fakeReturns{rules: map[netip.Addr]netip.Addr{}, mem: map[lb.Frontend]bool{}}
	}
	hellos := func() []meta.Hello {
		hs := w.hellos()
		for i := range hs {
			if !noLocator[hs[i].ClusterID] {
				hs[i].Locator = testLocator(index[hs[i].ClusterID])
			}
		}
		return hs
	}
	w.tune = func(c *Config) {
		c.Locator, c.RedirectMode, c.Hellos = testLocator(index[c.ClusterID]), lb.ModeSRv6, hellos
		c.Agents = srv6FakeAgents{fakeAgents: c.Agents.(*fakeAgents), loc: c.Locator, ret: rets[c.ClusterID]}
	}
	for _, id := range ids { // rebuilt with tune
		w.stop(id)
		w.start(id)
	}
	return w
}

// srv6SlowWorld is srv6World for a, b, c with a drain budget of 2 s and
// b's copy taking stopFor to stop gracefully.
func srv6SlowWorld(t *testing.T, stopFor time.Duration) *world {
	t.Helper()
	w := srv6World(t, nil, "a", "b", "c")
	tune := w.tune
	w.tune = func(c *Config) { tune(c); c.DrainTimeout = 2 * time.Second }
	for _, id := range []string{"a", "b", "c"} {
		w.restart(id)
	}
	b := w.cluster("b").be
	b.mu.Lock()
	b.stopFor = stopFor
	b.mu.Unlock()
	return w
}

// TestSRv6Paths: a service redirected by SRv6 goes home -> b with the
// home's path [b] and b's nodes made a location (return route to the
// home's SID, then the copy serving); then b -> c (b moves it on) with the
// home's path [b, c] committed (make before break), b's copy draining,
// then gone with its return route, and the home's path [c] once b says its
// copy is gone (b's copy takes 500 ms to stop; the home's timer would wait
// its drain budget, 2 s, and 1 s more). The reconciler leaves [b, c] alone
// meanwhile.
func TestSRv6Paths(t *testing.T) {
	w := srv6SlowWorld(t, 500*time.Millisecond)
	w.deploy("a")
	f := w.frontend("a")
	rec := w.mustRecord("a")
	if rec.Service.Redirect != lb.ModeSRv6 {
		t.Fatalf("deployed with redirect %q: the cluster's default srv6 must be fixed on the record", rec.Service.Redirect)
	}
	w.acts.take()
	w.mustMigrate("a", "b")
	sa, sb, sc := testSID(t, 1), testSID(t, 2), testSID(t, 3)
	for i := range 2 {
		if got := w.cluster("a").ag.active(i, f); got != lb.SRv6(sb) {
			t.Fatalf("home node %d: active %s, want [b] %s", i, got, lb.SRv6(sb))
		}
	}
	w.expectActions([]string{
		fmt.Sprintf("srv6 b returns [%s] -> %s remove=false", f, sa),
		fmt.Sprintf("srv6 b copies [%s] serving", f),
	}, "srv6 ")

	w.reconcile("a")
	w.acts.take()
	// Forwarded to b, which moves it on; answered at the commit (b's drain
	// and cleanup run behind the answer).
	m, err := w.eng("a").Migrate(context.Background(), "web", ctrl.MigrateRequest{Destination: "c", Return: ctrl.ReturnCommitted})
	if err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	two := lb.SRv6(sb, sc)
	if got := w.cluster("a").ag.active(0, f); got != two {
		t.Fatalf("home during the move: active %s, want [b, c] %s", got, two)
	}
	w.reconcile("a")
	if got := w.cluster("a").ag.active(0, f); got != two {
		t.Fatalf("the reconciler changed [b, c] to %s before the old copy was gone", got)
	}
	w.eventually("the home's path shortened to [c]", func() error {
		for i := range 2 {
			if got := w.cluster("a").ag.active(i, f); got != lb.SRv6(sc) {
				return fmt.Errorf("home node %d: active %s", i, got)
			}
		}
		return nil
	})
	if el := time.Since(committed); el >= 3*time.Second {
		t.Errorf("path shortened %s after the move, not before the home's timer (3 s)", el)
	}
	w.expectActions([]string{
		fmt.Sprintf("srv6 c returns [%s] -> %s remove=false", f, sa),
		fmt.Sprintf("srv6 c copies [%s] serving", f),
		fmt.Sprintf("srv6 b copies [%s] draining", f),
		fmt.Sprintf("srv6 b copies [%s] gone", f),
		"b: peer SRv6Gone a",
		fmt.Sprintf("srv6 b returns [%s] -> %s remove=true", f, sa),
	}, "srv6 ", "b: peer SRv6Gone")
	eng := w.eng("a")
	for _, c := range []struct {
		step string
		want float64
	}{{"home_path_1", 1}, {"gone_word", 1}, {"gone_timer", 0}} {
		if n := counterValue(eng.srv6m.steps.WithLabelValues(c.step)); n != c.want {
			t.Errorf("%s steps %v, want %v", c.step, n, c.want)
		}
	}
	// Only b, the cluster the move left, may say so, and only while the
	// move waits: now a late word changes nothing.
	if err := eng.SRv6Gone(context.Background(), ctrl.Caller{Cluster: "b"}, "web", m.FromEpoch); err != nil {
		t.Errorf("a late word: %v", err)
	}
}

// TestSRv6ShortenOnTimer: the old location's word is lost (its call to
// the home fails): the home shortens [b, c] to [c] once b's drain budget
// has run out (2 s, and 1 s more), not before. Meanwhile a word from a
// cluster the move did not leave is refused.
func TestSRv6ShortenOnTimer(t *testing.T) {
	w := srv6SlowWorld(t, 100*time.Millisecond)
	w.deploy("a")
	f := w.frontend("a")
	w.mustMigrate("a", "b")
	w.net.set("b->a SRv6Gone", fault{err: errInjected})
	m := w.mustMigrate("a", "c")
	committed := time.Now()
	err := w.eng("a").SRv6Gone(context.Background(), ctrl.Caller{Cluster: "c"}, "web", m.FromEpoch)
	if !errors.Is(err, ErrConflict) {
		t.Errorf("a word from c about b's copy: %v, want a conflict", err)
	}
	w.eventually("the home's path shortened to [c]", func() error {
		if got := w.cluster("a").ag.active(0, f); got != lb.SRv6(testSID(t, 3)) {
			return fmt.Errorf("home: active %s", got)
		}
		return nil
	})
	if el := time.Since(committed); el < 2*time.Second {
		t.Errorf("path shortened %s after the move, before the old copy's drain budget ran out", el)
	}
	eng := w.eng("a")
	for _, c := range []struct {
		step string
		want float64
	}{{"home_path_1", 1}, {"gone_word", 0}, {"gone_timer", 1}} {
		if n := counterValue(eng.srv6m.steps.WithLabelValues(c.step)); n != c.want {
			t.Errorf("%s steps %v, want %v", c.step, n, c.want)
		}
	}
}

// TestSRv6RefusesNoLocator: a move to a cluster that announces no locator
// is refused before any copy state is set, rolled back, the reason said
// and counted; a home without a locator refuses to deploy an SRv6 service.
func TestSRv6RefusesNoLocator(t *testing.T) {
	w := srv6World(t, map[string]bool{"b": true}, "a", "b")
	w.deploy("a")
	w.acts.take()
	_, err := w.migrate("a", "b")
	if err == nil || !strings.Contains(err.Error(), "b announces no SRv6 locator") {
		t.Fatalf("migrate to a cluster without a locator: %v", err)
	}
	if got := w.cluster("a").ag.active(0, w.frontend("a")); got != lb.Local {
		t.Fatalf("home points at %s after the refusal, want local", got)
	}
	if n := counterValue(w.eng("a").srv6m.refused.WithLabelValues(srv6NoLocator)); n < 1 {
		t.Errorf("refusals counted %v", n)
	}

	w.tune = func(c *Config) { c.RedirectMode = lb.ModeSRv6 }
	w.stop("a")
	w.start("a")
	d := w.descriptor()
	d.Name = "other"
	d.Ports[0].Port++
	if _, err := w.eng("a").Deploy(context.Background(), d); err == nil || !strings.Contains(err.Error(), "--srv6-locator") {
		t.Fatalf("deploy srv6 without a locator: %v", err)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestSRv6MoveHomeKeepsOldCopy: a move back home by SRv6 (asked of the
// old location, which moves its copy on) leaves the old copy its graceful
// stop: the home's load balancer keeps the connections opened along the
// previous path on it (bpf/srv6.h srv6_previous), which its conntrack does
// not see, so the home must not say "drained" (it would find no flow at
// once, and the old location would kill its copy under them). The old
// location drains, then gone, then deletes its copy gracefully.
func TestSRv6MoveHomeKeepsOldCopy(t *testing.T) {
	w := srv6World(t, nil, "a", "b")
	tune := w.tune
	w.tune = func(c *Config) { tune(c); c.DrainTimeout = 2 * time.Second } // the old copy's graceful stop (300 ms) fits
	for _, id := range []string{"a", "b"} {
		w.restart(id)
	}
	w.deploy("a")
	f := w.frontend("a")
	w.mustMigrate("a", "b")
	b := w.cluster("b").be
	b.mu.Lock()
	b.stopFor = 300 * time.Millisecond
	b.mu.Unlock()
	w.acts.take()
	m := w.mustMigrate("a", "a") // forwarded to b, the mover
	if m.Role != ctrl.RoleMover {
		t.Fatalf("move home ran as %s, want %s", m.Role, ctrl.RoleMover)
	}
	if got := w.cluster("a").ag.active(0, f); got != lb.Local {
		t.Fatalf("home after the move home: active %s, want local", got)
	}
	// On b's word the home commits local again: the data plane's hold of
	// the previous path ends at once.
	w.eventually("local committed again on b's word", func() error {
		if n := counterValue(w.eng("a").srv6m.steps.WithLabelValues("home_previous_end")); n != 1 {
			return fmt.Errorf("home_previous_end steps %v", n)
		}
		return nil
	})
	got := w.acts.take("srv6 ", "b: backend", "b: peer SRv6Gone", "a: agents stage", "a: agents commit")
	var bs, as []string
	for _, a := range got {
		if strings.HasPrefix(a, "a: ") {
			as = append(as, a)
		} else {
			bs = append(bs, a)
		}
	}
	wantB := []string{
		fmt.Sprintf("srv6 b copies [%s] draining", f),
		"b: backend delete web",
		fmt.Sprintf("srv6 b copies [%s] gone", f),
		"b: peer SRv6Gone a",
		fmt.Sprintf("srv6 b returns [%s] -> %s remove=true", f, testSID(t, 1)),
	}
	stageCommit := []string{fmt.Sprintf("a: agents stage %d local", f.Port), fmt.Sprintf("a: agents commit %d", f.Port)}
	wantA := append(slices.Clone(stageCommit), stageCommit...)
	word := slices.Index(got, "b: peer SRv6Gone a")
	if !slices.Equal(bs, wantB) || !slices.Equal(as, wantA) || word < 0 || slices.Index(got[word:], stageCommit[0]) < 0 {
		t.Fatalf("actions:\n  got  %s\n  want b's %s\n  and the home's stage and commit of local twice, the second after b's word", strings.Join(got, "\n       "), strings.Join(wantB, "\n       "))
	}
}

// TestSRv6NodeSIDs: SIDs are per node. The service "web" goes to node 1
// of each cluster (by its name's hash over two nodes), not node 0: the
// home's path names b's node 1 and b's return route names the home's node
// 1 (what the home asked for: the node its frontend address picks). A node whose agent has another SID than
// its place allocates fails the move before any copy state is set,
// rolled back, counted; and a SID a peer names outside its locator is
// refused.
func TestSRv6NodeSIDs(t *testing.T) {
	for i, sid := range []netip.Addr{pickSID([]netip.Addr{testSID0(t, 2), testSID(t, 2)}, "web"), testSID(t, 2)} {
		if n0 := testSID0(t, 2); sid == n0 {
			t.Fatalf("%d: web's SID %s is node 0's", i, sid)
		}
	}
	w := srv6World(t, nil, "a", "b", "c")
	w.deploy("a")
	f := w.frontend("a")
	w.acts.take()
	m := w.mustMigrate("a", "b")
	if m.ToSID != testSID(t, 2) {
		t.Fatalf("migration's SID %s, want b's node 1 %s", m.ToSID, testSID(t, 2))
	}
	if r := w.mustRecord("a"); r.SRv6SID != testSID(t, 2) {
		t.Fatalf("home record's SID %s, want b's node 1 %s", r.SRv6SID, testSID(t, 2))
	}
	for i := range 2 {
		if got := w.cluster("a").ag.active(i, f); got != lb.SRv6(testSID(t, 2)) {
			t.Fatalf("home node %d: active %s, want b's node 1", i, got)
		}
	}
	w.expectActions([]string{
		fmt.Sprintf("srv6 b returns [%s] -> %s remove=false", f, testSID(t, 1)),
		fmt.Sprintf("srv6 b copies [%s] serving", f),
	}, "srv6 ")

	// c's node 0 has node 1's SID (say, a copied flag).
	tune := w.tune
	w.tune = func(c *Config) {
		tune(c)
		if c.ClusterID == "c" {
			a := c.Agents.(srv6FakeAgents)
			a.sids = map[int]netip.Addr{0: testSID(t, 3)}
			c.Agents = a
		}
	}
	w.restart("c")
	w.acts.take()
	_, err := w.migrate("a", "c")
	if err == nil || !strings.Contains(err.Error(), "node 0 has the SID "+testSID(t, 3).String()) {
		t.Fatalf("move to a cluster whose node 0 has node 1's SID: %v", err)
	}
	if got := w.cluster("a").ag.active(0, f); got != lb.SRv6(testSID(t, 2)) {
		t.Fatalf("home after the refused move: active %s, want [b] still", got)
	}
	for _, a := range w.acts.take("srv6 c") { // the rollback's removal of the copy may say draining, gone
		if strings.Contains(a, "serving") || strings.Contains(a, "remove=false") {
			t.Fatalf("c made its copy serve despite the bad SID: %s", a)
		}
	}
	if n := counterValue(w.eng("c").srv6m.refused.WithLabelValues(srv6BadNodeSID)); n != 1 {
		t.Errorf("bad_node_sid refusals at c: %v", n)
	}

	eng := w.eng("a")
	if _, err := eng.peerSID("b", testSID(t, 3)); err == nil || !strings.Contains(err.Error(), "outside its locator") {
		t.Fatalf("b naming c's SID: %v", err)
	}
	if sid, err := eng.peerSID("b", netip.Addr{}); err != nil || sid != testSID0(t, 2) {
		t.Fatalf("b naming none (a peer from before per-node SIDs): %s, %v; want its node 0", sid, err)
	}
}

func testSID0(t *testing.T, i int) netip.Addr {
	t.Helper()
	a, err := lb.NodeSID(testLocator(i), 0)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSRv6HomeSIDPerAddress: two services of one home (one frontend
// address, two ports) whose names pick different nodes move to one
// location: both copies' return routes name the same home node, since the
// location routes their answers by that shared source address alone (by
// service, the second's rule never matched, and the first's could outlive
// its copy).
func TestSRv6HomeSIDPerAddress(t *testing.T) {
	w := srv6World(t, nil, "a", "b")
	w.deploy("a")
	two := []netip.Addr{testSID0(t, 1), testSID(t, 1)}
	other := ""
	for _, n := range []string{"api", "db", "cam", "x", "y", "z"} {
		if pickSID(two, n) != pickSID(two, "web") {
			other = n
			break
		}
	}
	if other == "" {
		t.Fatal("no name picks another node than web")
	}
	d := w.descriptor()
	d.Name = other
	d.Ports[0].Port = testPort + 1
	if _, err := w.eng("a").Deploy(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	w.acts.take()
	w.mustMigrate("a", "b")
	if _, err := w.eng("a").Migrate(context.Background(), other, ctrl.MigrateRequest{Destination: "b"}); err != nil {
		t.Fatal(err)
	}
	var sids []string
	for _, a := range w.acts.take("srv6 b returns") {
		sids = append(sids, a[strings.Index(a, "->"):])
	}
	if len(sids) != 2 || sids[0] != sids[1] {
		t.Fatalf("return routes of web and %s at b: %q, want two naming one home SID", other, sids)
	}
}

// TestSRv6OldAgent: b's node 1 runs an agent from before per-node SIDs
// (GET /v1/srv6/node answers 404). Moves to b still work, naming b's node
// 0 (as before per-node SIDs), not node 1 that "web" picks; the old agent
// is logged and counted once over two moves.
func TestSRv6OldAgent(t *testing.T) {
	w := srv6World(t, nil, "a", "b")
	tune := w.tune
	w.tune = func(c *Config) {
		tune(c)
		if c.ClusterID == "b" {
			a := c.Agents.(srv6FakeAgents)
			a.old = map[int]bool{1: true}
			c.Agents = a
		}
	}
	w.restart("b")
	w.deploy("a")
	f := w.frontend("a")
	for range 2 {
		m := w.mustMigrate("a", "b")
		if m.ToSID != testSID0(t, 2) {
			t.Fatalf("migration's SID %s, want b's node 0 %s", m.ToSID, testSID0(t, 2))
		}
		if got := w.cluster("a").ag.active(0, f); got != lb.SRv6(testSID0(t, 2)) {
			t.Fatalf("home: active %s, want [b's node 0]", got)
		}
		w.mustMigrate("b", "a")
	}
	if n := counterValue(w.eng("b").srv6m.oldAgents); n != 1 {
		t.Errorf("old agents counted at b: %v, want 1", n)
	}
	if n := counterValue(w.eng("b").srv6m.refused.WithLabelValues(srv6BadNodeSID)); n != 0 {
		t.Errorf("bad_node_sid refusals at b: %v", n)
	}
}

// TestSRv6RenumberedLocator: after the home's record keeps b's node 1 SID,
// b renumbers its locator. The reconciler re-derives the path to node 1
// of the new locator (not refused on every pass, the nodes left on a SID
// nothing routes), counted once over two passes; a stored SID not shaped
// like a node SID of a locator as long as the new one falls back to node
// 0.
func TestSRv6RenumberedLocator(t *testing.T) {
	w := srv6World(t, nil, "a", "b")
	w.deploy("a")
	f := w.frontend("a")
	w.mustMigrate("a", "b")
	if r := w.mustRecord("a"); r.SRv6SID != testSID(t, 2) {
		t.Fatalf("record's SID %s, want b's node 1 %s", r.SRv6SID, testSID(t, 2))
	}
	renum := testLocator(9)
	tune := w.tune
	w.tune = func(c *Config) {
		tune(c)
		hs := c.Hellos
		c.Hellos = func() []meta.Hello {
			out := hs()
			for i := range out {
				if out[i].ClusterID == "b" {
					out[i].Locator = renum
				}
			}
			return out
		}
		if c.ClusterID == "b" {
			c.Locator = renum
			a := c.Agents.(srv6FakeAgents)
			a.loc = renum
			c.Agents = a
		}
	}
	w.restart("a")
	w.restart("b")
	want, err := lb.NodeSID(renum, 1)
	if err != nil {
		t.Fatal(err)
	}
	for pass := range 2 {
		w.reconcile("a")
		for i := range 2 {
			if got := w.cluster("a").ag.active(i, f); got != lb.SRv6(want) {
				t.Fatalf("pass %d, home node %d: active %s, want [%s] (b's node 1 in its new locator)", pass, i, got, want)
			}
		}
	}
	eng := w.eng("a")
	if n := counterValue(eng.srv6m.sidsRederived); n != 1 {
		t.Errorf("SIDs re-derived: %v, want 1", n)
	}
	if n := counterValue(eng.srv6m.refused.WithLabelValues(srv6BadNodeSID)); n != 0 {
		t.Errorf("bad_node_sid refusals at the home: %v, want 0", n)
	}
	if sid, err := eng.storedSID("b", netip.MustParseAddr("fc00:0:2::abcd")); err != nil || sid != mustNodeSID(t, renum, 0) {
		t.Errorf("a stored SID of no node's shape: %s, %v; want node 0 of %s", sid, err, renum)
	}
	// A fresh SID a peer names outside its locator is still refused.
	if _, err := eng.peerSID("b", testSID(t, 2)); err == nil {
		t.Error("a peer naming a SID outside its locator: accepted")
	}
}

func mustNodeSID(t *testing.T, loc netip.Prefix, n uint16) netip.Addr {
	t.Helper()
	a, err := lb.NodeSID(loc, n)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSRv6DirectReturn: a service with direct_return moves to b with no
// return route call at b's nodes (installs none, removes none); a service
// that says nothing takes the home cluster's default (off: the route
// installed; on: no call); direct_return without SRv6 is refused.
func TestSRv6DirectReturn(t *testing.T) {
	on, off := true, false
	for _, c := range []struct {
		desc       string
		descriptor *bool
		def        bool
		direct     bool
	}{
		{"descriptor on", &on, false, true},
		{"descriptor off, default on", &off, true, false},
		{"default off", nil, false, false},
		{"default on", nil, true, true},
	} {
		t.Run(c.desc, func(t *testing.T) {
			w := srv6World(t, nil, "a", "b")
			tune := w.tune
			w.tune = func(cfg *Config) { tune(cfg); cfg.SRv6DirectReturn = c.def }
			w.restart("a")
			d := w.descriptor()
			d.DirectReturn = c.descriptor
			if _, err := w.eng("a").Deploy(context.Background(), d); err != nil {
				t.Fatal(err)
			}
			if got := w.mustRecord("a").Service.DirectReturn; (got != nil) != c.direct || (got != nil && !*got) {
				t.Fatalf("the home's record: direct_return %v, want set (true) only when on", got)
			}
			w.acts.take()
			w.mustMigrate("a", "b")
			acts := w.acts.take("srv6 b returns")
			if c.direct && len(acts) != 0 {
				t.Fatalf("b's return routes: %q, want no call (direct return)", acts)
			}
			if !c.direct && (len(acts) != 1 || !strings.HasSuffix(acts[0], "remove=false")) {
				t.Fatalf("b's return routes: %q, want one install (remove=false)", acts)
			}
		})
	}
	w := newWorld(t, "a")
	d := w.descriptor()
	d.DirectReturn = &on
	if _, err := w.eng("a").Deploy(context.Background(), d); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "direct_return needs redirect srv6") {
		t.Fatalf("deploy of a NAT service with direct_return: %v", err)
	}
	if n := counterValue(w.eng("a").srv6m.refused.WithLabelValues(srv6NotSRv6)); n != 1 {
		t.Errorf("direct_return_not_srv6 refusals: %v, want 1", n)
	}
}

// TestSRv6DirectReturnKeepsSharedRoute: S2 (no direct return) runs at b
// with its return route; b's agent restarts (it no longer knows which
// frontends share the route of the home's address); S1 (direct return,
// the same home, so the same address) arrives at b and departs. S2's
// route stays throughout: a direct-return copy installs and removes none.
func TestSRv6DirectReturnKeepsSharedRoute(t *testing.T) {
	on := true
	w := srv6World(t, nil, "a", "b")
	w.deploy("a")
	w.mustMigrate("a", "b")
	addr := w.frontend("a").Addr
	rets := w.eng("b").cfg.Agents.(srv6FakeAgents).ret
	want, ok := rets.rule(addr)
	if !ok {
		t.Fatalf("S2 at b: no return route for %s", addr)
	}
	rets.restart()
	d := w.descriptor()
	d.Name, d.Ports[0].Port, d.DirectReturn = "dsr", testPort+1, &on
	if _, err := w.eng("a").Deploy(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	w.acts.take()
	if _, err := w.eng("a").Migrate(context.Background(), "dsr", ctrl.MigrateRequest{Destination: "b"}); err != nil {
		t.Fatal(err)
	}
	if acts := w.acts.take("srv6 b returns"); len(acts) != 0 {
		t.Errorf("S1 (direct return) arriving at b set return routes: %q, want none", acts)
	}
	if sid, ok := rets.rule(addr); !ok || sid != want {
		t.Fatalf("after S1 (direct return) arrived at b: S2's return route %s, %v; want it kept, to %s", sid, ok, want)
	}
	if n := counterValue(w.eng("b").srv6m.dsrOff); n != 1 {
		t.Errorf("direct return off at b (S2's route on the address): counted %v, want 1", n)
	}
	if _, err := w.eng("a").Migrate(context.Background(), "dsr", ctrl.MigrateRequest{Destination: "a"}); err != nil {
		t.Fatal(err)
	}
	w.eventually("S1's copy at b gone", func() error {
		if _, err := w.eng("b").st.Record("dsr"); err == nil {
			return errors.New("b still has S1's record")
		}
		return nil
	})
	if acts := w.acts.take("srv6 b returns"); len(acts) != 0 {
		t.Errorf("S1 (direct return) departing b set return routes: %q, want none", acts)
	}
	if sid, ok := rets.rule(addr); !ok || sid != want {
		t.Fatalf("after S1 (direct return) left b: S2's return route %s, %v; want it kept, to %s", sid, ok, want)
	}
}
