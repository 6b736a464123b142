package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend/backendtest"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/testport"
)

// TestDirectorySurvivesRestartDuringNATSOutage: b has the MO's view (a
// in it) and saves it; NATS goes down and b is restarted. b's directory
// is the saved one, stale, and /readyz says so: a's peer call succeeds,
// one from c (a certificate of the installation, a cluster never seen) is
// still refused unknown_cluster. A controller with nothing saved is not
// ready and refuses a as well (the fault without the saved directory).
// When NATS and the MO are back, b's directory is the view again.
func TestDirectorySurvivesRestartDuringNATSOutage(t *testing.T) {
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	lo := netip.MustParseAddr("127.0.0.1")
	natsAddr := netip.AddrPortFrom(lo, testport.Free(t, lo)).String()
	startMO := func() *meta.Server {
		t.Helper()
		var mo *meta.Server
		// The old socket may linger a moment after a Close.
		err := tick.Until(context.Background(), 10*time.Second, 50*time.Millisecond, func() (err error) {
			mo, err = meta.NewServer(meta.ServerConfig{Listen: natsAddr, HelloInterval: 100 * time.Millisecond, DownAfter: 3, Logger: logger})
			return err
		})
		if err != nil {
			t.Fatalf("start MO: %v", err)
		}
		return mo
	}
	mo := startMO()
	defer func() { mo.Close() }()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tdir := func(id string) string { return filepath.Join(dir, id+"-tls") }
	as := map[string]*http.Client{}
	for _, id := range []string{"a", "b", "c", "d"} {
		if err := ca.WriteIdentity(tdir(id), pki.ID{Cluster: id}, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
		cert, err := tls.LoadX509KeyPair(filepath.Join(tdir(id), pki.CertFile), filepath.Join(tdir(id), pki.KeyFile))
		if err != nil {
			t.Fatal(err)
		}
		as[id] = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := func(id string) *Controller {
		t.Helper()
		src, err := pki.Load(tdir(id))
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(ctx, Config{ClusterID: id, APIAddr: "127.0.0.1:0", NATSURL: "nats://" + natsAddr,
			StorePath: filepath.Join(dir, id+".db"), Backend: &backendtest.Memory{}, TLS: src,
			DataAddr: lo, FrontendAddr: lo, AllowLoopbackEndpoints: true,
			HelloInterval: 100 * time.Millisecond, Logger: logger.With("ctrl", id)})
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		return c
	}
	eventually := func(what string, f func() error) {
		t.Helper()
		if err := tick.Until(ctx, 30*time.Second, 50*time.Millisecond, f); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	call := func(from, method, url, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		resp, err := as[from].Do(req)
		if err != nil {
			t.Fatalf("%s %s as %s: %v", method, url, from, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	readyz := func(c *Controller) (int, DirectoryState) {
		t.Helper()
		code, body := call("a", "GET", c.URL()+"/readyz", "")
		var out struct {
			Detail struct {
				Directory DirectoryState `json:"directory"`
			} `json:"detail"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("readyz %s: %v", body, err)
		}
		return code, out.Detail.Directory
	}
	// home asks c for a copy of its service svc.
	deploy := func(home string, c *Controller, svc string, port int) (int, string) {
		body := fmt.Sprintf(`{"home":%q,"home_url":"https://127.0.0.1:1","epoch":{"migration_id":"m-%s","n":1},`+
			`"service":{"name":%q,"demo":true,"ports":[{"port":%d,"protocol":"tcp"}]}}`, home, svc, svc, port)
		return call(home, "POST", c.URL()+"/v1/peer/foreign", body)
	}

	a := start("a")
	defer a.Close()
	b := start("b")
	eventually("b's directory is the view, with a and b, and saved", func() error {
		if st := b.Directory(); st.State != DirectorySynced {
			return fmt.Errorf("directory %+v", st)
		}
		if _, ok := b.dir.ControllerURL("a"); !ok {
			return fmt.Errorf("a not in b's directory")
		}
		b.dir.known.mu.Lock()
		defer b.dir.known.mu.Unlock()
		urls := map[string]string{}
		for _, e := range b.dir.known.saved.Clusters {
			urls[e.ClusterID] = e.ControllerURL
		}
		if urls["a"] != a.URL() || urls["b"] != b.URL() {
			return fmt.Errorf("a and b not saved yet: %+v", b.dir.known.saved)
		}
		return nil
	})
	if code, st := readyz(b); code != http.StatusOK || st.State != DirectorySynced {
		t.Fatalf("b's /readyz with the view: %d %+v", code, st)
	}
	if code, out := deploy("a", b, "web", 18080); code != http.StatusOK {
		t.Fatalf("a's call to b with the view: %d %s", code, out)
	}

	// NATS (and the MO) down, b restarted (its store kept).
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	mo.Close()
	b = start("b")
	defer func() { b.Close() }()
	if code, st := readyz(b); code != http.StatusOK || st.State != DirectoryStale || !slices.Equal(st.Clusters, []string{"a", "b"}) || st.Saved.IsZero() {
		t.Fatalf("b's /readyz restarted without NATS: %d %+v, want 200 stale with a and b", code, st)
	}
	if code, out := deploy("a", b, "api", 18081); code != http.StatusOK {
		t.Fatalf("a's call to b restarted without NATS: %d %s", code, out)
	}
	if code, out := deploy("c", b, "db", 18082); code != http.StatusForbidden || !strings.Contains(out, api.DenyUnknownCluster) {
		t.Fatalf("c (never seen) calling b: %d %s, want 403 %s", code, out, api.DenyUnknownCluster)
	}
	// Nothing saved: not ready, and a is refused (what b did before).
	d := start("d")
	defer d.Close()
	if code, st := readyz(d); code != http.StatusServiceUnavailable || st.State != DirectoryLoading {
		t.Fatalf("d's /readyz, never synced, without NATS: %d %+v, want 503 loading", code, st)
	}
	if code, out := deploy("a", d, "web", 18083); code != http.StatusForbidden || !strings.Contains(out, api.DenyUnknownCluster) {
		t.Fatalf("a calling d, which never had the view: %d %s, want 403 %s", code, out, api.DenyUnknownCluster)
	}

	// NATS and the MO back: b and d load the view.
	mo = startMO()
	eventually("b and d synced again", func() error {
		for _, c := range []*Controller{b, d} {
			if code, st := readyz(c); code != http.StatusOK || st.State != DirectorySynced {
				return fmt.Errorf("%s: %d %+v", c.cfg.ClusterID, code, st)
			}
			if _, ok := c.dir.ControllerURL("a"); !ok {
				return fmt.Errorf("a not in %s's directory", c.cfg.ClusterID)
			}
		}
		return nil
	})
	if code, out := deploy("a", d, "web", 18083); code != http.StatusOK {
		t.Fatalf("a's call to d with the view: %d %s", code, out)
	}
}
