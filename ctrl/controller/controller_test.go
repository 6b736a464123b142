package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/backendtest"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// blackHole accepts connections and never answers (a peer whose host is
// up but whose controller hangs, or a lossy path).
func blackHole(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	netns.BlackHole(t, l)
	return "https://" + l.Addr().String()
}

// TestServesWhileRecovering: the journal holds a mover's migration whose
// outcome only its home can tell, and the home black-holes every call. The
// controller serves at once (it used to recover before serving, waiting
// minutes on the home); the service being settled answers 503 with
// Retry-After; another service answers normally.
func TestServesWhileRecovering(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "b.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	home := blackHole(t)
	d := ctrl.Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Port: 18080, Protocol: lb.TCP}}}
	epoch := ctrl.Epoch{MigrationID: "m-1", N: 1}
	for _, r := range []ctrl.Record{
		{Service: d, Kind: ctrl.KindForeign, Home: "a", HomeURL: home, Cluster: "b", Epoch: epoch},
		{Service: ctrl.Descriptor{Name: "api", Demo: true, Ports: []backend.Port{{Port: 18081, Protocol: lb.TCP}}}, Kind: ctrl.KindLocal, Home: "b", Cluster: "b"},
	} {
		if err := st.PutRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	m := ctrl.Migration{ID: "m-2", Service: "web", Role: ctrl.RoleMover, Home: "a", HomeURL: home, From: "b", To: "c",
		ToURL: blackHole(t), Stage: ctrl.StageReroute, State: ctrl.StateRunning, FromEpoch: epoch, Epoch: epoch.Next("m-2"), Started: time.Now()}
	if err := st.PutMigration(m); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, id := range []string{"a", "b"} {
		ids[id] = filepath.Join(dir, id+"-tls")
		if err := ca.WriteIdentity(ids[id], pki.ID{Cluster: id}, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	bID, err := pki.Load(ids["b"])
	if err != nil {
		t.Fatal(err)
	}
	aCert, err := tls.LoadX509KeyPair(filepath.Join(ids["a"], pki.CertFile), filepath.Join(ids["a"], pki.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	asA := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{aCert}}}}
	c, err := New(ctx, Config{ClusterID: "b", APIAddr: "127.0.0.1:0", StorePath: path, Backend: &backendtest.Memory{},
		TLS: bID, Peers: map[string]string{"a": home}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the controller took %s to start", took)
	}
	get := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL()+path, nil)
		resp, err := asA.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get("/healthz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %s", resp.Status)
	}
	resp := get("/v1/peer/where/web")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("where web while it is settled: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}
	deadline := time.Now().Add(5 * time.Second)
	for get("/v1/peer/where/api").StatusCode != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("the other service is still not recovered")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
