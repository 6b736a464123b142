package api

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/roamnet/roam/ctrl/backend/local"
	"github.com/roamnet/roam/ctrl/demo/demotest"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/test/testport"
)

// TestMain lets the test binary double as the demo service.
func TestMain(m *testing.M) { demotest.Main(m) }

func newTestServer(t *testing.T, token string) *Server {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	be, err := local.New(local.Config{ClusterID: "a", ExposeAddr: netip.MustParseAddr("127.0.0.1"), ListenAddr: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	id := testIdentity(t, pki.ID{Cluster: "a"})
	peers := NewPeerClient("a", id, testDir{})
	reg := prometheus.NewRegistry()
	eng, err := migrate.New(migrate.Config{ClusterID: "a", URL: "https://127.0.0.1:1", Store: st, Backend: be, Peers: peers, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var users *Users
	if token != "" {
		users = StaticUsers(User{Name: "u", Role: RoleOperate, Hash: HashToken(token)})
	}
	s, err := NewServer(Config{Engine: eng, Users: users, TLS: id, Peers: peers, Gatherer: reg, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testCA is the CA of the handler-level tests' identities.
var testCA = func() *pki.CA {
	ca, err := pki.NewCA("api-test", time.Hour)
	if err != nil {
		panic(err)
	}
	return ca
}()

func testIdentity(t *testing.T, id pki.ID) *pki.Source {
	t.Helper()
	dir := t.TempDir()
	if err := testCA.WriteIdentity(dir, id, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	s, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// peerCert marks a request as made over TLS with the certificate of src.
type peerCert struct{ src *pki.Source }

func call(t *testing.T, h http.Handler, method, path string, tok any, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewBufferString(body))
	if p, ok := tok.(peerCert); ok {
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{p.src.Leaf()}}
	} else if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok.(string))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestAuthAndBadInput(t *testing.T) {
	s := newTestServer(t, "usertok")
	h := s.Handler()
	peer := peerCert{testIdentity(t, pki.ID{Cluster: "b"})}
	cases := []struct {
		name, method, path string
		tok                any
		body               string
		status             int
		want               string
	}{
		{"no token", "GET", "/v1/services", "", "", 401, "bearer token"},
		{"wrong token", "GET", "/v1/services", "nope", "", 401, "unknown token"},
		{"user ok", "GET", "/v1/services", "usertok", "", 200, "[]"},
		{"peer on user route", "GET", "/v1/services", peer, "", 403, "user routes take"},
		{"user token on peer route", "GET", "/v1/peer/health", "usertok", "", 401, "client certificate is required"},
		{"peer ok", "GET", "/v1/peer/health", peer, "", 200, `"cluster":"a"`},
		{"bad json", "POST", "/v1/services", "usertok", "{", 400, "decode request body"},
		{"unknown field", "POST", "/v1/services", "usertok", `{"name":"x","bogus":1}`, 400, "unknown field"},
		{"bad name", "POST", "/v1/services", "usertok", `{"name":"Bad_Name","demo":true,"ports":[{"port":80,"protocol":"tcp"}]}`, 400, "DNS label"},
		{"bad proto", "POST", "/v1/services", "usertok", `{"name":"x","demo":true,"ports":[{"port":80,"protocol":"sctp"}]}`, 400, "tcp or udp"},
		{"no ports", "POST", "/v1/services", "usertok", `{"name":"x","demo":true}`, 400, "at least one port"},
		{"nothing to run", "POST", "/v1/services", "usertok", `{"name":"x","ports":[{"port":80,"protocol":"tcp"}]}`, 400, "demo, command or image"},
		{"unknown service", "GET", "/v1/services/nope", "usertok", "", 404, "no such service"},
		{"migrate unknown", "POST", "/v1/services/nope/migrate", "usertok", `{}`, 404, "no such service"},
		{"migrate bad dest", "POST", "/v1/services/nope/migrate", "usertok", `{"destination":"a.b"}`, 400, "destination"},
		{"remove without home", "DELETE", "/v1/peer/foreign/x", peer, "", 400, "home is required"},
		{"moved-on incomplete", "POST", "/v1/peer/moved-on", peer, `{"service":"x"}`, 400, "required"},
		{"no route", "GET", "/v2/x", "usertok", "", 404, "no route"},
		{"healthz open", "GET", "/healthz", "", "", 200, "ok"},
	}
	for _, c := range cases {
		w := call(t, h, c.method, c.path, c.tok, c.body)
		if w.Code != c.status || !strings.Contains(w.Body.String(), c.want) {
			t.Errorf("%s: %d %q, want %d containing %q", c.name, w.Code, w.Body.String(), c.status, c.want)
		}
	}
	if n := counterValue(s.errs.WithLabelValues(ReasonUnauthorized)); n != 3 {
		t.Errorf("unauthorized counted %v, want 3", n)
	}
	if n := counterValue(s.errs.WithLabelValues(ReasonForbidden)); n != 1 {
		t.Errorf("forbidden counted %v, want 1", n)
	}
	if n := counterValue(s.errs.WithLabelValues(ReasonInvalid)); n != 6 {
		t.Errorf("invalid counted %v, want 6", n)
	}
	if n := counterValue(s.errs.WithLabelValues(ReasonBadJSON)); n != 3 {
		t.Errorf("bad json counted %v, want 3", n)
	}
	w := call(t, h, "GET", "/metrics", "", "")
	if !strings.Contains(w.Body.String(), "roam_ctrl_api_errors_total") {
		t.Error("metrics lack roam_ctrl_api_errors_total")
	}
}

func TestDeployGetDelete(t *testing.T) {
	s := newTestServer(t, "tok")
	h := s.Handler()
	port := strconv.Itoa(int(testport.Free(t)))
	body := `{"name":"web","demo":true,"ports":[{"port":` + port + `,"protocol":"tcp"}]}`
	if w := call(t, h, "POST", "/v1/services", "tok", body); w.Code != 201 || !strings.Contains(w.Body.String(), `"kind":"local"`) {
		t.Fatalf("deploy: %d %s", w.Code, w.Body)
	}
	if w := call(t, h, "POST", "/v1/services", "tok", body); w.Code != 409 {
		t.Fatalf("second deploy: %d %s", w.Code, w.Body)
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if w := call(t, h, "GET", "/v1/services/web", "tok", ""); w.Code != 200 || !strings.Contains(w.Body.String(), `"cluster":"a"`) {
		t.Fatalf("get: %d %s", w.Code, w.Body)
	}
	if w := call(t, h, "DELETE", "/v1/services/web", "tok", ""); w.Code != 204 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	if w := call(t, h, "GET", "/v1/services/web", "tok", ""); w.Code != 404 {
		t.Fatalf("get after delete: %d", w.Code)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
