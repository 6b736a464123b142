// Package integration runs whole controllers in-process on loopback: the
// real embedded meta-orchestrator, the local backend running the demo
// service, and real agents (agent API over a real BPF data plane, maps only).
package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/local"
	"github.com/roamnet/roam/ctrl/controller"
	"github.com/roamnet/roam/ctrl/demo/demotest"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/testport"
)

// TestMain lets the test binary double as the demo service.
func TestMain(m *testing.M) { demotest.Main(m) }

type cluster struct {
	id    string
	addr  netip.Addr
	be    *local.Backend
	agent *agentapi.Client
	fault *agentFault // faults the agent's API injects (reroute_test.go)
	store string
	ln    string // API listen address, reused across restarts
	c     *controller.Controller
	mo    string
	hook  func(ctrl.Migration) error
	links string // measured links file read at every hello
	tls   *pki.Source
}

type env struct {
	t        *testing.T
	failsafe time.Duration
	mo       *meta.Server
	port     uint16
	cl       map[string]*cluster
	peers    map[string]string
	// users is the user client: the installation's CA, the token below.
	users *http.Client
}

func startAgent(t *testing.T) (*agentapi.Client, *agentFault) {
	t.Helper()
	dp := dptest.New(t, dataplane.Config{SNATv4: netip.MustParseAddr("10.99.0.1"), IdleTimeout: time.Minute})
	srv, err := agentapi.NewServer(dp, agentapi.ServerConfig{Token: "agent-tok"})
	if err != nil {
		t.Fatal(err)
	}
	f := &agentFault{}
	hs := httptest.NewServer(f.wrap(srv.Handler()))
	t.Cleanup(hs.Close)
	return agentapi.New(hs.URL, "agent-tok"), f
}

func newEnv(t *testing.T, ids ...string) *env { return newEnvFailsafe(t, time.Second, ids...) }

func newEnvFailsafe(t *testing.T, failsafe time.Duration, ids ...string) *env {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	mo, err := meta.NewServer(meta.ServerConfig{Listen: "127.0.0.1:0", HelloInterval: 200 * time.Millisecond, DownAfter: 3, Logger: logger})
	if err != nil {
		t.Fatalf("start MO: %v", err)
	}
	t.Cleanup(func() { mo.Close() })
	e := &env{t: t, failsafe: failsafe, mo: mo, cl: map[string]*cluster{}, peers: map[string]string{}}
	var addrs []netip.Addr
	for i := range ids {
		addrs = append(addrs, netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)}))
	}
	// The controllers' API ports first (they are closed here and opened
	// again by start), then a service port none of them took.
	apis := make([]string, len(ids))
	agents := make([]*agentapi.Client, len(ids)) // they listen from now on
	faults := make([]*agentFault, len(ids))
	for i := range ids {
		agents[i], faults[i] = startAgent(t)
		apis[i] = netip.AddrPortFrom(addrs[i], testport.Free(t, addrs[i])).String()
	}
	e.port = testport.Free(t, addrs...) // never one handed out before
	dir := t.TempDir()
	// One installation: a CA and a certificate per cluster (mutual TLS
	// between the controllers, as deployed).
	ca, err := pki.NewCA("integration", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	e.users = &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for i, id := range ids {
		be, err := local.New(local.Config{ClusterID: id, ListenAddr: addrs[i], ExposeAddr: addrs[i], Pods: 8, MilliCPU: 4000, MemoryMB: 4096, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		c := &cluster{id: id, addr: addrs[i], be: be, agent: agents[i], fault: faults[i], store: filepath.Join(dir, id+".db"), links: filepath.Join(dir, id+"-links.json"), ln: apis[i], mo: mo.ClientURL()}
		tdir := filepath.Join(dir, id+"-tls")
		if err := ca.WriteIdentity(tdir, pki.ID{Cluster: id}, []string{addrs[i].String()}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if c.tls, err = pki.Load(tdir); err != nil {
			t.Fatal(err)
		}
		e.peers[id] = "https://" + c.ln
		e.cl[id] = c
	}
	for _, id := range ids {
		e.start(id)
	}
	// Every controller is in the MO's view, and in every controller's copy
	// of it (the compact view the MO writes after it heard the hellos),
	// before tests place anything.
	e.eventually("every cluster in the MO's view and every controller's", func() error {
		for _, c := range e.cl {
			if !e.inView(c.id) {
				return fmt.Errorf("%s missing", c.id)
			}
			for _, o := range e.cl {
				if c.c != nil && !slices.ContainsFunc(c.c.Clusters(), func(s meta.ClusterStatus) bool { return s.Hello.ClusterID == o.id }) {
					return fmt.Errorf("%s missing at %s", o.id, c.id)
				}
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range e.cl {
			if c.c != nil {
				c.c.Close()
			}
		}
	})
	return e
}

func (e *env) inView(id string) bool {
	for _, s := range e.mo.Registry().Snapshot(time.Now()) {
		if s.Hello.ClusterID == id && s.State == "alive" {
			return true
		}
	}
	return false
}

func (e *env) start(id string) {
	e.t.Helper()
	c := e.cl[id]
	var ln net.Listener
	var err error
	for range 100 { // the old socket may linger a moment
		if ln, err = net.Listen("tcp", c.ln); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatalf("listen %s: %v", c.ln, err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.c, err = controller.New(ctx, controller.Config{ClusterID: id, Tier: meta.TierEdge, Listener: ln,
		AdvertiseURL: "https://" + c.ln, NATSURL: c.mo, Agents: []string{c.agent.URL()}, AgentToken: "agent-tok",
		FrontendAddr: c.addr, DataAddr: c.addr, StorePath: c.store, HelloInterval: 200 * time.Millisecond,
		FailsafeAfter: e.failsafe, DrainTimeout: 2 * time.Second, TLS: c.tls, AllowLoopbackEndpoints: true,
		Users: api.StaticUsers(api.User{Name: "test", Role: api.RoleOperate, Hash: api.HashToken("user-tok")}),
		Peers: e.peers, Backend: c.be, CrashHook: c.hook, LinksFile: c.links,
		PolicyInterval: 200 * time.Millisecond, PolicyCooldown: 500 * time.Millisecond, Logger: logger.With("ctrl", id)})
	if err != nil {
		e.t.Fatalf("start controller %s: %v", id, err)
	}
	// It serves at once and recovers in the background: wait for that.
	e.eventually(id+" recovers", func() error {
		if n := c.c.Engine.Recovering(); n > 0 {
			return fmt.Errorf("%d services not recovered yet", n)
		}
		return nil
	})
}

func (e *env) stop(id string) {
	c := e.cl[id]
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

func (e *env) eventually(what string, f func() error) {
	e.t.Helper()
	if err := tick.Until(context.Background(), 45*time.Second, 50*time.Millisecond, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return c
}

func (e *env) frontend(id string) lb.Frontend {
	return lb.Frontend{Addr: e.cl[id].addr, Port: e.port, Proto: lb.TCP}
}

// active is the home agent's active target for the service frontend.
func (e *env) active(home string) lb.Target {
	e.t.Helper()
	s, err := e.cl[home].agent.Get(ctx(e.t), e.frontend(home))
	if err != nil {
		e.t.Fatalf("agent %s get %s: %v", home, e.frontend(home), err)
	}
	if s.Staged.Kind != lb.TargetNone {
		e.t.Fatalf("agent %s: %s left staged", home, s.Staged)
	}
	return s.Active
}

func (e *env) answer(id string) string {
	e.t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + netip.AddrPortFrom(e.cl[id].addr, e.port).String() + "/")
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (e *env) running(id string) bool {
	_, err := e.cl[id].be.Get(context.Background(), "web")
	return err == nil
}

func (e *env) record(id string) (ctrl.Record, bool) {
	r, err := e.cl[id].c.Engine.Get("web")
	return r, err == nil
}

// expectAt checks the whole picture for a service homed at home running at
// at: home's LB target, its record, the copy answering, and no other copy.
func (e *env) expectAt(home, at string) {
	e.t.Helper()
	want := lb.Local
	if at != home {
		want = lb.Redirect(netip.AddrPortFrom(e.cl[at].addr, e.port))
	}
	if got := e.active(home); got != want {
		e.t.Fatalf("home %s LB target %s, want %s", home, got, want)
	}
	r, ok := e.record(home)
	if !ok || r.Cluster != at {
		e.t.Fatalf("home record %+v, want running at %s", r, at)
	}
	if !strings.HasPrefix(e.answer(at), "cluster "+at+" ") {
		e.t.Fatalf("copy at %s answers %q", at, e.answer(at))
	}
	for id := range e.cl {
		if e.cl[id].c == nil {
			continue
		}
		if id != at && e.running(id) {
			e.t.Fatalf("a copy still runs at %s (service at %s)", id, at)
		}
		if id != at && id != home {
			if _, ok := e.record(id); ok {
				e.t.Fatalf("%s still holds a record", id)
			}
		}
	}
	if at != home {
		fr, ok := e.record(at)
		if !ok || fr.Kind != ctrl.KindForeign || fr.Home != home {
			e.t.Fatalf("record at %s: %+v", at, fr)
		}
	}
}

func (e *env) deploy(home string) { e.deployNeed(home, 0) }

func (e *env) deployNeed(home string, needMbps float64) {
	e.t.Helper()
	d := ctrl.Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Port: e.port, Protocol: lb.TCP}},
		Resources: backend.Resources{MilliCPU: 100, MemoryMB: 64}, NeedMbps: needMbps}
	if _, err := e.cl[home].c.Engine.Deploy(ctx(e.t), d); err != nil {
		e.t.Fatal(err)
	}
	e.expectAt(home, home)
}

// rest calls a controller's REST API with the user token.
func (e *env) rest(id, method, path, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.peers[id]+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer user-tok")
	resp, err := e.users.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMigrateMultiHopForwardingHome(t *testing.T) {
	e := newEnv(t, "a", "b", "c")
	e.deploy("a")

	// a -> b through the REST API.
	code, body := e.rest("a", "POST", "/v1/services/web/migrate", `{"destination":"b","reason":"manual"}`)
	if code != 200 || !strings.Contains(body, `"state":"done"`) {
		t.Fatalf("migrate a->b: %d %s", code, body)
	}
	for _, st := range []string{"trigger", "placement", "replication", "reroute", "verify", "commit", "drain", "cleanup"} {
		if !strings.Contains(body, `"stage":"`+st+`"`) {
			t.Fatalf("migration lacks stage %s: %s", st, body)
		}
	}
	e.expectAt("a", "b")
	req, _ := http.NewRequest("GET", e.peers["a"]+"/metrics", nil)
	resp, err := e.users.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`roam_ctrl_migration_stage_seconds_count{stage="reroute"} 1`, `roam_ctrl_migrations_total{result="done",role="home"} 1`} {
		if !strings.Contains(string(mb), want) {
			t.Fatalf("metrics lack %s", want)
		}
	}

	// A GET at home is answered by b, as if local.
	code, body = e.rest("a", "GET", "/v1/services/web", "")
	if code != 200 || !strings.Contains(body, `"kind":"foreign"`) || !strings.Contains(body, `"home":"a"`) {
		t.Fatalf("forwarded get: %d %s", code, body)
	}

	// Multi-hop: the migrate call at home is forwarded to b, which moves
	// it to c and tells a ("moved on").
	code, body = e.rest("a", "POST", "/v1/services/web/migrate", `{"destination":"c"}`)
	if code != 200 || !strings.Contains(body, `"role":"mover"`) {
		t.Fatalf("migrate b->c: %d %s", code, body)
	}
	e.expectAt("a", "c")

	// Back home.
	code, body = e.rest("a", "POST", "/v1/services/web/migrate", `{"destination":"a"}`)
	if code != 200 {
		t.Fatalf("migrate c->a: %d %s", code, body)
	}
	e.expectAt("a", "a")
	if r, _ := e.record("a"); r.Kind != ctrl.KindLocal {
		t.Fatalf("home record kind %s", r.Kind)
	}

	// Placement by the MO (no destination): anywhere but a.
	code, body = e.rest("a", "POST", "/v1/services/web/migrate", `{}`)
	if code != 200 {
		t.Fatalf("migrate via MO: %d %s", code, body)
	}
	r, _ := e.record("a")
	if r.Kind != ctrl.KindAbroad || (r.Cluster != "b" && r.Cluster != "c") {
		t.Fatalf("after MO placement: %+v", r)
	}
	e.expectAt("a", r.Cluster)
	lost := r.Cluster

	// Fail-safe: the abroad controller goes away, and its copy stops
	// answering (frozen: the path users take is dead too); a takes the
	// service home and commits its LB back to local. (The controller
	// alone going away is not a loss: the copy still serves.)
	e.stop(lost)
	frozen := e.cl[lost].be.PID("web")
	if err := syscall.Kill(-frozen, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-frozen, syscall.SIGCONT)
	e.eventually("fail-safe takes the service home", func() error {
		r, _ := e.record("a")
		if r.Kind != ctrl.KindLocal {
			return fmt.Errorf("still %s at %s", r.Kind, r.Cluster)
		}
		return nil
	})
	if got := e.active("a"); got != lb.Local {
		t.Fatalf("after fail-safe the LB points at %s", got)
	}
	if !strings.HasPrefix(e.answer("a"), "cluster a ") {
		t.Fatalf("home copy answers %q", e.answer("a"))
	}
	if !e.running(lost) {
		t.Fatalf("the lost cluster's copy should still run while it is cut off")
	}
	// It returns: the orphan copy there is removed; exactly one copy.
	if err := syscall.Kill(-frozen, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	e.start(lost)
	e.eventually("orphan removed", func() error {
		if e.running(lost) {
			return fmt.Errorf("copy still runs at %s", lost)
		}
		if _, ok := e.record(lost); ok {
			return fmt.Errorf("record still at %s", lost)
		}
		return nil
	})
	e.expectAt("a", "a")

	// Bad requests get clear 4xx.
	if code, body := e.rest("a", "POST", "/v1/services/web/migrate", `{"destination":"nowhere"}`); code != 400 || !strings.Contains(body, "no controller URL") {
		t.Fatalf("unknown destination: %d %s", code, body)
	}
	if code, _ := e.rest("b", "DELETE", "/v1/services/web", ""); code != 404 {
		t.Fatalf("delete at non-home: %d", code)
	}
	// Delete at home.
	if code, body := e.rest("a", "DELETE", "/v1/services/web", ""); code != 204 {
		t.Fatalf("delete: %d %s", code, body)
	}
	if e.running("a") {
		t.Fatal("copy runs after delete")
	}
}

// crashPoint fails a controller's journal write of one stage, as a crash
// right after it would (the engine's CrashHook); set picks the stage,
// ctrl.StageNone none.
type crashPoint struct {
	mu    sync.Mutex
	stage ctrl.Stage
}

func (p *crashPoint) set(s ctrl.Stage) {
	p.mu.Lock()
	p.stage = s
	p.mu.Unlock()
}

// crashAt installs a crashPoint on cluster id's controller, for its
// migrations in role, and restarts that controller so that it takes
// effect.
func (e *env) crashAt(id string, role ctrl.Role) *crashPoint {
	p := &crashPoint{stage: ctrl.StageNone}
	e.cl[id].hook = func(m ctrl.Migration) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if m.Role == role && m.Stage == p.stage {
			return fmt.Errorf("crash at %s", m.Stage)
		}
		return nil
	}
	e.stop(id)
	e.start(id)
	return p
}

// mustMigrate has cluster id migrate "web" to dest; an error fails t.
func (e *env) mustMigrate(t *testing.T, id, dest string) {
	t.Helper()
	if _, err := e.cl[id].c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{Destination: dest}); err != nil {
		t.Fatal(err)
	}
}

// crashAndRecover has cluster id migrate "web" to dest with crash set at
// stage, checks the migration stopped there, restarts id (it recovers
// from the journal) and returns its latest migration, which recovery must
// have settled.
func (e *env) crashAndRecover(t *testing.T, crash *crashPoint, id string, stage ctrl.Stage, dest string) ctrl.Migration {
	t.Helper()
	crash.set(stage)
	_, err := e.cl[id].c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{Destination: dest})
	if err == nil || !strings.Contains(err.Error(), "crash at") {
		t.Fatalf("migrate did not stop at %s: %v", stage, err)
	}
	crash.set(ctrl.StageNone)
	e.stop(id)
	e.start(id)
	ms, _ := e.cl[id].c.Engine.Migrations()
	last := ms[len(ms)-1]
	if last.State == ctrl.StateRunning {
		t.Fatalf("migration still running after recovery: %+v", last)
	}
	return last
}

// TestCrashAtEachStage kills (stops) the home controller right after the
// journal write of each stage, starts a new one on the same store, and
// checks it settles to a consistent state: before the commit, everything as
// it was; from the commit on, the migration finished.
func TestCrashAtEachStage(t *testing.T) {
	e := newEnv(t, "a", "b")
	crash := e.crashAt("a", ctrl.RoleHome)
	e.deploy("a")
	for _, stage := range ctrl.Stages() {
		t.Run(stage.String(), func(t *testing.T) {
			last := e.crashAndRecover(t, crash, "a", stage, "b")
			switch stage {
			case ctrl.StageCommit, ctrl.StageDrain, ctrl.StageCleanup:
				if last.State != ctrl.StateDone {
					t.Fatalf("after a crash at %s the migration should finish: %+v", stage, last)
				}
				e.expectAt("a", "b")
				// Bring it home for the next round.
				e.mustMigrate(t, "a", "a")
			default:
				if last.State != ctrl.StateFailed {
					t.Fatalf("after a crash at %s the migration should roll back: %+v", stage, last)
				}
			}
			e.expectAt("a", "a")
		})
	}
}

// TestPolicyBandwidth: the abroad cluster's hellos report the link to the
// home falling below the service's need; the home's policy moves the
// service (the call is forwarded to the abroad cluster, which asks the MO;
// the only candidate left is the home).
func TestPolicyBandwidth(t *testing.T) {
	e := newEnv(t, "a", "b")
	e.deployNeed("a", 10)
	e.mustMigrate(t, "a", "b")
	e.expectAt("a", "b")
	if err := os.WriteFile(e.cl["b"].links, []byte(`[{"peer":"a","bandwidth_mbps":50,"rtt_ms":2,"up":true}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Enough bandwidth: it stays (give the policy a few rounds).
	e.eventually("b's link in a's view", func() error {
		for _, h := range e.mo.Registry().Snapshot(time.Now()) {
			if l, ok := h.Hello.LinkTo("a"); ok && h.Hello.ClusterID == "b" && l.BandwidthMbps == 50 {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	time.Sleep(time.Second)
	if r, _ := e.record("a"); r.Cluster != "b" {
		t.Fatalf("moved with enough bandwidth: %+v", r)
	}
	if err := os.WriteFile(e.cl["b"].links, []byte(`[{"peer":"a","bandwidth_mbps":1,"rtt_ms":2,"up":true}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.eventually("the policy moves the service", func() error {
		r, _ := e.record("a")
		if r.Cluster != "a" {
			return fmt.Errorf("still at %s", r.Cluster)
		}
		if e.running("b") {
			return fmt.Errorf("b not cleaned up yet")
		}
		ms, _ := e.cl["b"].c.Engine.Migrations()
		if last := ms[len(ms)-1]; last.State != ctrl.StateDone {
			return fmt.Errorf("b's migration %s", last.State)
		}
		return nil
	})
	e.expectAt("a", "a")
	ms, _ := e.cl["b"].c.Engine.Migrations()
	if last := ms[len(ms)-1]; last.Reason != "network-change" {
		t.Fatalf("b's migration %+v", last)
	}
	r, _ := e.record("a")
	if r.LastMigration == nil || r.LastMigration.Reason != "moved-on" {
		t.Fatalf("last migration %+v", r.LastMigration)
	}
}

// TestCrashMoverAtEachStage crashes the abroad cluster while it moves a
// foreign service on (multi-hop), at each of its stages, and checks the
// restarted controller settles it: before the home rerouted, the service
// stays where it was; after, the move completes.
func TestCrashMoverAtEachStage(t *testing.T) {
	e := newEnvFailsafe(t, 20*time.Second, "a", "b", "c")
	crash := e.crashAt("b", ctrl.RoleMover)
	e.deploy("a")
	e.mustMigrate(t, "a", "b")
	e.expectAt("a", "b")
	for _, stage := range []ctrl.Stage{ctrl.StageTrigger, ctrl.StagePlacement, ctrl.StageReplication, ctrl.StageReroute, ctrl.StageCleanup} {
		t.Run(stage.String(), func(t *testing.T) {
			e.crashAndRecover(t, crash, "b", stage, "c")
			if stage == ctrl.StageCleanup {
				e.expectAt("a", "c")
				e.mustMigrate(t, "a", "b")
			}
			e.expectAt("a", "b")
		})
	}
}

// TestCrashHomeDuringMovedOn crashes the home while it reroutes after a
// "moved on" notice (the connection drops as with kill -9). The mover keeps
// both copies until the restarted home says where the service is; then
// exactly one copy is left and the home's LB points at it.
func TestCrashHomeDuringMovedOn(t *testing.T) {
	e := newEnvFailsafe(t, 20*time.Second, "a", "b", "c")
	crash := e.crashAt("a", ctrl.RoleReroute)
	e.deploy("a")
	e.mustMigrate(t, "a", "b")
	at := "b"
	for _, stage := range []ctrl.Stage{ctrl.StageReroute, ctrl.StageVerify, ctrl.StageCommit, ctrl.StageDrain} {
		t.Run(stage.String(), func(t *testing.T) {
			next := map[string]string{"b": "c", "c": "b"}[at]
			crash.set(stage)
			_, err := e.cl[at].c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{Destination: next})
			if err == nil && stage.BeforeCommit() {
				// (From the commit on, the home's reconciler may roll the
				// reroute forward before the mover asks where it is.)
				t.Fatalf("migrate survived a home crash at %s", stage)
			}
			crash.set(ctrl.StageNone)
			// The hook stops the home's reroute, not its process: its
			// reconciler settles it and the mover learns the outcome at
			// once, so whether both copies are kept while the outcome is
			// unknown is checked by ctrl/migrate's TestCrashHomeDuringMovedOn.
			e.stop("a")
			e.start("a")
			want := at
			if !stage.BeforeCommit() {
				want = next
			}
			e.eventually("the mover settles", func() error {
				for _, id := range []string{"b", "c"} {
					if id != want && e.running(id) {
						return fmt.Errorf("copy still at %s", id)
					}
				}
				ms, _ := e.cl[at].c.Engine.Migrations()
				if last := ms[len(ms)-1]; last.State == ctrl.StateRunning {
					return fmt.Errorf("mover's migration still running")
				}
				return nil
			})
			e.expectAt("a", want)
			at = want
		})
	}
}

// TestPlaceWithoutMO: the MO is gone; the controller places from the meta
// client's cached hellos and the migration is marked a local decision.
func TestPlaceWithoutMO(t *testing.T) {
	e := newEnvFailsafe(t, 20*time.Second, "a", "b")
	e.deploy("a")
	// Both controllers have seen each other's hellos.
	e.eventually("a caches b's hellos", func() error {
		for _, s := range e.cl["a"].c.Clusters() {
			if s.Hello.ClusterID == "b" && s.State == "alive" {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	e.mo.Close()
	m, err := e.cl["a"].c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{})
	if err != nil {
		t.Fatalf("migrate without the MO: %v", err)
	}
	if !m.LocalDecision || m.To != "b" {
		t.Fatalf("migration %+v: want a local decision for b", m)
	}
	e.expectAt("a", "b")
}
