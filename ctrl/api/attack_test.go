package api

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/local"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/testport"
)

// The attacks of issue 11, each run as the attacker would: real
// controllers (engine, store, local backend, this API) serving mutual TLS
// on loopback, called with another cluster's real certificate, another
// installation's, a node's, a replayed token or a forged URL. Each must be
// refused with 401/403 and counted in roam_ctrl_auth_denied_total.

// testDir is a static directory: the clusters' URLs and declared
// addresses.
type testDir struct {
	urls map[string]string
	data map[string][]netip.Addr
}

func (d testDir) ControllerURL(id string) (string, bool) { u, ok := d.urls[id]; return u, ok }
func (d testDir) ClustersAt(u string) []string {
	var out []string
	for id, v := range d.urls {
		if strings.TrimRight(v, "/") == u {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
func (d testDir) DataAddrs(id string) ([]netip.Addr, bool) { a, ok := d.data[id]; return a, ok }

type testCluster struct {
	id   string
	dir  string // its identity's directory
	src  *pki.Source
	srv  *Server
	ts   *httptest.Server
	eng  *migrate.Engine
	st   *store.Store
	be   *local.Backend
	reg  *prometheus.Registry
	peer *PeerClient
}

type testInstall struct {
	ca  *pki.CA
	dir testDir
	cl  map[string]*testCluster
}

// newInstall starts one controller API per id, all of one installation.
func newInstall(t *testing.T, ids ...string) *testInstall {
	t.Helper()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	in := &testInstall{ca: ca, dir: testDir{urls: map[string]string{}, data: map[string][]netip.Addr{}}, cl: map[string]*testCluster{}}
	for i, id := range ids {
		c := &testCluster{id: id, dir: t.TempDir(), reg: prometheus.NewRegistry()}
		if err := ca.WriteIdentity(c.dir, pki.ID{Cluster: id}, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if c.src, err = pki.Load(c.dir); err != nil {
			t.Fatal(err)
		}
		addr := netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)})
		if c.st, err = store.Open(filepath.Join(t.TempDir(), id+".db")); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.st.Close() })
		if c.be, err = local.New(local.Config{ClusterID: id, ExposeAddr: addr, ListenAddr: addr}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.be.Close() })
		c.ts = httptest.NewUnstartedServer(nil)
		url := "https://" + c.ts.Listener.Addr().String()
		in.dir.urls[id] = url
		in.dir.data[id] = []netip.Addr{addr}
		c.peer = NewPeerClient(id, c.src, in.dir)
		c.peer.Endpoints.AllowLoopback = true
		if c.eng, err = migrate.New(migrate.Config{ClusterID: id, URL: url, Store: c.st, Backend: c.be, Peers: c.peer,
			Directory: in.dir, Registerer: c.reg}); err != nil {
			t.Fatal(err)
		}
		users := StaticUsers(User{Name: "ops", Role: RoleOperate, Hash: HashToken("op-" + id)}, User{Name: "viewer", Role: RoleRead, Hash: HashToken("ro-" + id)})
		if c.srv, err = NewServer(Config{Engine: c.eng, Users: users, TLS: c.src, Peers: c.peer, Gatherer: c.reg, Registerer: c.reg}); err != nil {
			t.Fatal(err)
		}
		c.ts.Config.Handler = c.srv.Handler()
		// As roam-ctrl serves (httptest's StartTLS would put its own
		// certificate first).
		c.ts.Listener = tls.NewListener(c.ts.Listener, c.src.ServerConfig())
		c.ts.Start()
		t.Cleanup(c.ts.Close)
		in.cl[id] = c
	}
	return in
}

// as is an HTTP client presenting the identity in dir (trusting any
// server: the attacker does not care who answers).
func as(t *testing.T, dir string) *http.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, pki.CertFile), filepath.Join(dir, pki.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
}

// anon is an HTTP client with no certificate.
func anon() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

func send(t *testing.T, hc *http.Client, method, url, tok, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (c *testCluster) denied(reason string) float64 {
	return counterValue(c.srv.denied.WithLabelValues(reason))
}

// expectDenied checks a refusal: its status and that its reason was
// counted once more than before.
func expectDenied(t *testing.T, what string, c *testCluster, reason string, want int, do func() (int, string)) {
	t.Helper()
	before := c.denied(reason)
	code, body := do()
	if code != want || !strings.Contains(body, reason) {
		t.Errorf("%s: %d %s, want %d (%s)", what, code, body, want, reason)
	}
	if got := c.denied(reason); got != before+1 {
		t.Errorf("%s: roam_ctrl_auth_denied_total{reason=%q} %v, want %v", what, reason, got, before+1)
	}
}

// seedAbroad makes home's web run at host: a real copy at host (deployed
// by home's request) and the matching records.
func seedAbroad(t *testing.T, in *testInstall, home, host string) (netip.AddrPort, ctrl.Epoch) {
	t.Helper()
	h := in.cl[host]
	port := testport.Free(t, in.dir.data[host][0])
	d := ctrl.Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Port: port, Protocol: lb.TCP}}}
	ep := ctrl.Epoch{MigrationID: "m1", N: 1}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := h.eng.DeployForeign(ctx, ctrl.Caller{Cluster: home}, ctrl.ForeignRequest{Home: home, HomeURL: in.dir.urls[home], Epoch: ep, Service: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.be.Delete(context.Background(), "web") })
	if err := in.cl[home].st.PutRecord(ctrl.Record{Service: d, Kind: ctrl.KindAbroad, Home: home, HomeURL: in.dir.urls[home],
		Cluster: host, ClusterURL: in.dir.urls[host], Endpoints: rep.Endpoints, Epoch: ep, Updated: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return rep.Endpoints[0], ep
}

// copyAnswers reports whether the copy at ep serves.
func copyAnswers(ep netip.AddrPort) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + ep.String() + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// TestAttackMovedOn: a moved-on notice is the one message that repoints
// a home's users. Only the cluster hosting the service may send it, to a
// cluster the directory lists, at addresses that cluster declares.
func TestAttackMovedOn(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	a, b, c := in.cl["a"], in.cl["b"], in.cl["c"]
	_, ep := seedAbroad(t, in, "a", "b")
	url := in.dir.urls["a"] + "/v1/peer/moved-on"
	notice := func(from, to, endpoint string) string {
		return `{"service":"web","epoch":{"migration_id":"evil","n":9},"from_epoch":{"migration_id":"` + ep.MigrationID +
			`","n":1},"from":"` + from + `","to":"` + to + `","to_url":"https://198.51.100.7:443","endpoints":["` + endpoint + `"]}`
	}
	// c, with its own real certificate, claims to be b (the host).
	expectDenied(t, "c posing as b", a, DenyNotHost, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", url, "", notice("b", "c", "127.0.0.3:80"))
	})
	// c says it moved the service itself.
	expectDenied(t, "c as itself", a, DenyNotHost, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", url, "", notice("c", "c", "127.0.0.3:80"))
	})
	// b, the real host, points the home at a cluster nobody knows ...
	expectDenied(t, "b to an unknown cluster", a, DenyUnknownCluster, 403, func() (int, string) {
		return send(t, as(t, b.dir), "POST", url, "", notice("b", "evil", "127.0.0.3:80"))
	})
	// ... or at an address c does not declare (an attacker's server).
	expectDenied(t, "b to a foreign address", a, DenyEndpoint, 403, func() (int, string) {
		return send(t, as(t, b.dir), "POST", url, "", notice("b", "c", "203.0.113.9:80"))
	})
	// The home's record did not move.
	r, err := a.eng.Get("web")
	if err != nil || r.Cluster != "b" || r.Epoch != ep {
		t.Fatalf("record after the attacks: %+v %v", r, err)
	}
}

// TestAttackRemoveForeign: killing another home's copy while its record
// stays (the home's load balancer points at nothing and no fail-safe
// fires) is refused, whatever home the request names.
func TestAttackRemoveForeign(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	b, c := in.cl["b"], in.cl["c"]
	copyEP, _ := seedAbroad(t, in, "a", "b")
	if !copyAnswers(copyEP) {
		t.Fatal("the seeded copy does not answer")
	}
	base := in.dir.urls["b"] + "/v1/peer/foreign/web"
	expectDenied(t, "home=receiver", b, DenyNotHost, 403, func() (int, string) {
		return send(t, as(t, c.dir), "DELETE", base+"?home=b", "", "")
	})
	// Naming the real home: b asks a whether c hosts web; a says no.
	expectDenied(t, "home=a by c", b, DenyNotHome, 403, func() (int, string) {
		return send(t, as(t, c.dir), "DELETE", base+"?home=a", "", "")
	})
	expectDenied(t, "home=c by c", b, DenyNotHome, 403, func() (int, string) {
		return send(t, as(t, c.dir), "DELETE", base+"?home=c", "", "")
	})
	if !copyAnswers(copyEP) {
		t.Fatal("a's copy at b was killed by c")
	}
	if r, err := b.eng.Get("web"); err != nil || r.Kind != ctrl.KindForeign || r.Home != "a" {
		t.Fatalf("b's record: %+v %v", r, err)
	}
	// The real home may remove it (naming the copy's epoch).
	if code, body := send(t, as(t, in.cl["a"].dir), "DELETE", base+"?home=a&migration_id=m1&epoch=1", "", ""); code != 204 {
		t.Fatalf("home's remove: %d %s", code, body)
	}
	// The copy stops gracefully (SIGTERM, then it drains): it ends soon.
	for deadline := time.Now().Add(15 * time.Second); copyAnswers(copyEP); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the home's remove left the copy running")
		}
	}
}

// TestAttackDeployForeign: a peer may not have copies started on another
// home's behalf unless that home says it hosts the service, and never a
// command.
func TestAttackDeployForeign(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	b, c := in.cl["b"], in.cl["c"]
	url := in.dir.urls["b"] + "/v1/peer/foreign"
	req := func(home, run string) string {
		return `{"home":"` + home + `","home_url":"https://198.51.100.7","epoch":{"migration_id":"x","n":1},"service":{"name":"web",` +
			run + `,"ports":[{"port":18081,"protocol":"tcp"}]}}`
	}
	expectDenied(t, "command as its own home", b, DenyCommand, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", url, "", req("c", `"command":["sh","-c","id > /tmp/pwned"]`))
	})
	expectDenied(t, "on a's behalf", b, DenyNotHome, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", url, "", req("a", `"demo":true`))
	})
	expectDenied(t, "as b's own service", b, DenyNotHost, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", url, "", req("b", `"demo":true`))
	})
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Fatal("a peer's command ran")
	}
	if recs, _ := b.eng.List(); len(recs) != 0 {
		t.Fatalf("b recorded %v", recs)
	}
}

// TestAttackPeerOnUserRoutes: a controller's certificate opens no user
// route (a peer cannot deploy a command there either), and users cannot
// run commands unless the operator allowed it.
func TestAttackPeerOnUserRoutes(t *testing.T) {
	in := newInstall(t, "a", "c")
	a, c := in.cl["a"], in.cl["c"]
	body := `{"name":"x","command":["sh","-c","id"],"ports":[{"port":18082,"protocol":"tcp"}]}`
	expectDenied(t, "peer deploys", a, DenyPeerOnUserRoute, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", in.dir.urls["a"]+"/v1/services", "", body)
	})
	expectDenied(t, "peer lists", a, DenyPeerOnUserRoute, 403, func() (int, string) {
		return send(t, as(t, c.dir), "GET", in.dir.urls["a"]+"/v1/services", "", "")
	})
	expectDenied(t, "user command without --allow-command", a, DenyCommand, 403, func() (int, string) {
		return send(t, anon(), "POST", in.dir.urls["a"]+"/v1/services", "op-a", body)
	})
	expectDenied(t, "own identity", a, DenySelf, 403, func() (int, string) {
		return send(t, as(t, a.dir), "GET", in.dir.urls["a"]+"/v1/peer/health", "", "")
	})
}

// TestAttackOtherInstallation: a real certificate of another installation
// (same cluster name, its own CA) and a node's certificate are refused.
func TestAttackOtherInstallation(t *testing.T) {
	in := newInstall(t, "a", "b")
	a := in.cl["a"]
	other, err := pki.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := other.WriteIdentity(dir, pki.ID{Cluster: "b"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	expectDenied(t, "other installation's b", a, DenyBadCertificate, 401, func() (int, string) {
		return send(t, as(t, dir), "GET", in.dir.urls["a"]+"/v1/peer/health", "", "")
	})
	node := t.TempDir()
	if err := in.ca.WriteIdentity(node, pki.ID{Cluster: "b", Node: "n1"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	expectDenied(t, "b's node", a, DenyNotController, 403, func() (int, string) {
		return send(t, as(t, node), "GET", in.dir.urls["a"]+"/v1/peer/health", "", "")
	})
	// And the real b passes.
	if code, body := send(t, as(t, in.cl["b"].dir), "GET", in.dir.urls["a"]+"/v1/peer/health", "", ""); code != 200 {
		t.Fatalf("b's health probe: %d %s", code, body)
	}
}

// TestAttackTokens: a replayed shared-secret peer token, a user token on a
// peer route, an unknown token, a read-only user operating, and a revoked
// user's captured token.
func TestAttackTokens(t *testing.T) {
	in := newInstall(t, "a")
	a := in.cl["a"]
	u := in.dir.urls["a"]
	old := "roam1.b.9999999999.deadbeef"
	expectDenied(t, "replayed peer token", a, DenyPeerToken, 401, func() (int, string) { return send(t, anon(), "GET", u+"/v1/services", old, "") })
	expectDenied(t, "peer token on a peer route", a, DenyNoCertificate, 401, func() (int, string) {
		return send(t, anon(), "GET", u+"/v1/peer/health", old, "")
	})
	expectDenied(t, "user token on a peer route", a, DenyNoCertificate, 401, func() (int, string) {
		return send(t, anon(), "POST", u+"/v1/peer/moved-on", "op-a", "{}")
	})
	expectDenied(t, "no token", a, DenyNoCredentials, 401, func() (int, string) { return send(t, anon(), "GET", u+"/v1/services", "", "") })
	expectDenied(t, "unknown token", a, DenyBadToken, 401, func() (int, string) { return send(t, anon(), "GET", u+"/v1/services", "op-b", "") })
	expectDenied(t, "reader operates", a, DenyRole, 403, func() (int, string) {
		return send(t, anon(), "DELETE", u+"/v1/services/web", "ro-a", "")
	})
	if code, _ := send(t, anon(), "GET", u+"/v1/services", "ro-a", ""); code != 200 {
		t.Fatalf("reader reads: %d", code)
	}
	// Users come from a file re-read on change: a revoked user's
	// captured token stops working without a restart.
	f := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(f, []byte(UserLine("ops", RoleOperate, "tok-1")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	us, err := LoadUsers(f)
	if err != nil {
		t.Fatal(err)
	}
	a.srv.cfg.Users = us
	if code, _ := send(t, anon(), "GET", u+"/v1/services", "tok-1", ""); code != 200 {
		t.Fatalf("user from file: %d", code)
	}
	if err := os.WriteFile(f, []byte("# ops revoked\n"+UserLine("ops2", RoleOperate, "tok-2")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expectDenied(t, "revoked token", a, DenyBadToken, 401, func() (int, string) { return send(t, anon(), "GET", u+"/v1/services", "tok-1", "") })
}

// TestAttackForgedURL: URLs carried by messages are never dialled; a
// server at a directory URL must prove it is the cluster listed there.
func TestAttackForgedURL(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	a := in.cl["a"]
	// An attacker's server with c's real certificate.
	var accepted atomic.Int32
	evil := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		accepted.Add(1)
		_, _ = w.Write([]byte(`{"home":"b","known":false}`))
	}))
	evil.Listener = tls.NewListener(evil.Listener, in.cl["c"].src.ServerConfig())
	evil.Start()
	defer evil.Close()
	evilURL := "https://" + evil.Listener.Addr().String()
	ctx := context.Background()
	if _, err := a.peer.Where(ctx, evilURL, "web"); !errors.Is(err, ErrNotInDirectory) {
		t.Fatalf("a forged URL was dialled: %v", err)
	}
	if _, err := a.peer.DeployForeign(ctx, evilURL, ctrl.ForeignRequest{}); !errors.Is(err, ErrNotInDirectory) {
		t.Fatalf("a forged URL was dialled: %v", err)
	}
	if _, err := a.peer.Where(ctx, "http://"+strings.TrimPrefix(in.dir.urls["b"], "https://"), "web"); err == nil {
		t.Fatal("plain http to a peer")
	}
	// The attacker takes over b's address in the directory (a stale
	// entry, a spoofed route): its certificate says c, not b.
	in.dir.urls["b"] = evilURL
	if _, err := a.peer.Where(ctx, evilURL, "web"); err == nil || !strings.Contains(err.Error(), "the directory lists [b]") {
		t.Fatalf("c's server accepted as b: %v", err)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the attacker's server got %d requests", n)
	}
}

// TestWhereOnlyOwn: a peer learns where a service runs only if the
// service concerns it; another is told it is not known (and counted).
func TestWhereOnlyOwn(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	a := in.cl["a"]
	seedAbroad(t, in, "a", "b")
	ctx := context.Background()
	w, err := in.cl["b"].peer.Where(ctx, in.dir.urls["a"], "web")
	if err != nil || !w.Known || w.Cluster != "b" {
		t.Fatalf("host asks: %+v %v", w, err)
	}
	before := a.denied(DenyNotInvolved)
	w, err = in.cl["c"].peer.Where(ctx, in.dir.urls["a"], "web")
	if err != nil || w.Known || w.Cluster != "" {
		t.Fatalf("c asks: %+v %v", w, err)
	}
	if a.denied(DenyNotInvolved) != before+1 {
		t.Fatal("not counted")
	}
	// c may only check a yes/no about a named host.
	if ok, err := in.cl["c"].peer.hosts(ctx, "a", "web", "b"); err != nil || !ok {
		t.Fatalf("hosts b: %v %v", ok, err)
	}
	if ok, err := in.cl["c"].peer.hosts(ctx, "a", "web", "c"); err != nil || ok {
		t.Fatalf("hosts c: %v %v", ok, err)
	}
}

// TestNoUpstreamEcho: another controller's error text is not repeated to
// our callers.
func TestNoUpstreamEcho(t *testing.T) {
	in := newInstall(t, "a", "b")
	b := in.cl["b"]
	// b answers every forwarded call with a 500 carrying text.
	b.ts.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		_, _ = w.Write([]byte(`{"reason":"<script>","error":"SECRET-UPSTREAM-TEXT"}`))
	})
	seedAbroad(t, in, "a", "b")
	code, body := send(t, anon(), "POST", in.dir.urls["a"]+"/v1/services/web/migrate", "op-a", `{"destination":"a"}`)
	if code/100 != 5 || strings.Contains(body, "SECRET-UPSTREAM-TEXT") || strings.Contains(body, "<script>") {
		t.Fatalf("forwarded failure: %d %s", code, body)
	}
}

// TestBodyLimit: every route reads at most MaxBody of a body, a user's
// and a peer's alike: a larger one is refused as too large, and the
// server is not made to buffer it.
func TestBodyLimit(t *testing.T) {
	in := newInstall(t, "a", "b")
	a := in.cl["a"]
	u := in.dir.urls["a"]
	// Valid JSON up to the brace: only its size is wrong.
	big := `{"name":"` + strings.Repeat("x", MaxBody) + `"}`
	for _, tc := range []struct {
		what, method, url, tok string
		hc                     *http.Client
	}{
		{"user deploy", "POST", u + "/v1/services", "op-a", anon()},
		{"user migrate", "POST", u + "/v1/services/web/migrate", "op-a", anon()},
		{"peer moved-on", "POST", u + "/v1/peer/moved-on", "", as(t, in.cl["b"].dir)},
		{"peer foreign deploy", "POST", u + "/v1/peer/foreign", "", as(t, in.cl["b"].dir)},
	} {
		code, body := send(t, tc.hc, tc.method, tc.url, tc.tok, big)
		if code != http.StatusBadRequest || !strings.Contains(body, "too large") {
			t.Errorf("%s with a %d-byte body: %d %.200s", tc.what, len(big), code, body)
		}
	}
	if recs, _ := a.eng.List(); len(recs) != 0 {
		t.Fatalf("a recorded %v", recs)
	}
	// Just under the limit is read (and judged on its content).
	ok := `{"name":"` + strings.Repeat("x", 100) + `","demo":true,"ports":[{"port":0,"protocol":"tcp"}]}`
	if code, body := send(t, anon(), "POST", u+"/v1/services", "op-a", ok); code != http.StatusBadRequest || strings.Contains(body, "too large") {
		t.Fatalf("small body: %d %s", code, body)
	}
}

// TestAttackDrained: the word that a copy is drained stops it at once
// while a mover stops it, so only the copy's home may say it, and only of
// the copy's own epoch (a late word about an older copy must not cut a
// newer one's flows).
func TestAttackDrained(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	a, b, c := in.cl["a"], in.cl["b"], in.cl["c"]
	copyEP, ep := seedAbroad(t, in, "a", "b")
	base := in.dir.urls["b"] + "/v1/peer/foreign/web/drained"
	right := "?migration_id=" + ep.MigrationID + "&epoch=1"
	// c, with its own real certificate, is not web's home.
	expectDenied(t, "c says drained", b, DenyNotHome, 403, func() (int, string) {
		return send(t, as(t, c.dir), "POST", base+right, "", "")
	})
	// The home, naming another epoch (a late word, or a replay).
	expectDenied(t, "a of epoch 2", b, DenyEpoch, 403, func() (int, string) {
		return send(t, as(t, a.dir), "POST", base+"?migration_id="+ep.MigrationID+"&epoch=2", "", "")
	})
	expectDenied(t, "a of another migration", b, DenyEpoch, 403, func() (int, string) {
		return send(t, as(t, a.dir), "POST", base+"?migration_id=evil&epoch=1", "", "")
	})
	expectEpochCallChecks(t, b, base, right, a.dir)
	// A service b does not run.
	if code, body := send(t, as(t, a.dir), "POST", in.dir.urls["b"]+"/v1/peer/foreign/nope/drained"+right, "", ""); code != 404 {
		t.Errorf("unknown service: %d %s, want 404", code, body)
	}
	// The home's word of the right epoch is taken; with no move on
	// stopping the copy it does nothing: the copy serves on.
	if code, body := send(t, as(t, a.dir), "POST", base+right, "", ""); code != 204 {
		t.Fatalf("home's drained: %d %s", code, body)
	}
	if !copyAnswers(copyEP) {
		t.Fatal("the copy stopped on a drained word while no move on stopped it")
	}
	if r, err := b.eng.Get("web"); err != nil || r.Kind != ctrl.KindForeign || r.Epoch != ep {
		t.Fatalf("b's record: %+v %v", r, err)
	}
}

// expectEpochCallChecks: a peer call at base (served by at) that names an
// epoch (right, the query naming the right one) is refused without a
// certificate, and with an epoch that is no number even from a peer
// (dir: that peer's certificate).
func expectEpochCallChecks(t *testing.T, at *testCluster, base, right, dir string) {
	t.Helper()
	expectDenied(t, "anonymous", at, DenyNoCertificate, 401, func() (int, string) {
		return send(t, anon(), "POST", base+right, "", "")
	})
	if code, body := send(t, as(t, dir), "POST", base+"?epoch=x", "", ""); code != 400 {
		t.Errorf("a bad epoch: %d %s, want 400", code, body)
	}
}

// TestAttackSRv6Gone: a location's word that its SRv6 copy is gone lets
// the home drop it from its path: it needs a peer's certificate and a
// well-formed epoch, is refused at a cluster that is not the service's
// home, and changes nothing when no move waits for it (a late word, or one
// about a copy that is not being left).
func TestAttackSRv6Gone(t *testing.T) {
	in := newInstall(t, "a", "b", "c")
	a, c := in.cl["a"], in.cl["c"]
	_, ep := seedAbroad(t, in, "a", "b")
	right := "?migration_id=" + ep.MigrationID + "&epoch=1"
	base := in.dir.urls["a"] + "/v1/peer/srv6-gone/web"
	expectEpochCallChecks(t, a, base, right, c.dir)
	// At b, where web is foreign: b is not its home.
	if code, body := send(t, as(t, c.dir), "POST", in.dir.urls["b"]+"/v1/peer/srv6-gone/web"+right, "", ""); code != 409 {
		t.Errorf("word at a cluster that is not the home: %d %s, want 409", code, body)
	}
	if code, body := send(t, as(t, c.dir), "POST", in.dir.urls["a"]+"/v1/peer/srv6-gone/nope"+right, "", ""); code != 404 {
		t.Errorf("unknown service: %d %s, want 404", code, body)
	}
	// No move waits: taken, nothing changes.
	if code, body := send(t, as(t, c.dir), "POST", base+right, "", ""); code != 204 {
		t.Fatalf("a word no move waits for: %d %s", code, body)
	}
	if r, err := a.eng.Get("web"); err != nil || r.Kind != ctrl.KindAbroad || r.Cluster != "b" || r.Epoch != ep {
		t.Fatalf("a's record: %+v %v", r, err)
	}
}
