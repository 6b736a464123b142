//go:build k8s

package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend/kube"
	"github.com/roamnet/roam/ctrl/controller"
	roampki "github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/meta"
)

// copySeen is what a watcher of cluster b saw of the copy a migration
// made there.
type copySeen struct {
	name, home, migration string
	readyNode             string // node of a ready endpoint in its EndpointSlice
}

// TestMigrationAcrossClusters runs two real roam controllers, a's and b's,
// each with the Kubernetes backend on its own control plane as the
// roam-ctrl ServiceAccount, the embedded meta-orchestrator and a real agent
// (BPF data plane) each, and migrates a service from a to b.
//
// What the control planes give, and is checked: the service deployed at
// home is a Deployment and Service in a; replication creates the copy in
// b, fenced with a's home and the migration id, and b's controller reports
// it ready from b's real EndpointSlices.
//
// What kwok cannot give: the copy's endpoint (a kwok node's address and the
// Service's node port) reaches nothing — no kubelet runs a container, no
// kube-proxy serves the node port. The migration's verify stage dials it,
// so here it fails, as it must, and the engine rolls back for real: the
// copy in b is deleted through b's apiserver, the home's data plane is left
// local, the copy in a keeps running. The cleanup stage (deleting the old
// copy in a) comes after a successful verify and needs a cluster with
// kubelets; the backend call it makes, Delete, is TestBackendLifecycle's.
func TestMigrationAcrossClusters(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the controllers' agents run the BPF data plane")
	}
	a, b := clusters["a"], clusters["b"]
	ctx := testCtx(t, 4*time.Minute)
	// kwok's nodes have addresses (10.77.0.0/16) but no data path. Make
	// that so on this machine too: an unreachable route, so a connection
	// to a node fails at once instead of going out of the default route
	// (where a sandbox's proxy may accept any TCP connection).
	_, nodeNet, _ := net.ParseCIDR("10.77.0.0/16")
	unreach := &netlink.Route{Dst: nodeNet, Type: unix.RTN_UNREACHABLE}
	if err := netlink.RouteAdd(unreach); err != nil {
		t.Fatalf("route kwok's node addresses to nowhere: %v", err)
	}
	t.Cleanup(func() { netlink.RouteDel(unreach) })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("K8S_TEST_LOG") != "" { // the controllers' logs
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	mo, err := meta.NewServer(meta.ServerConfig{Listen: "127.0.0.1:0", HelloInterval: 500 * time.Millisecond, DownAfter: 6, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mo.Close() })

	ids := []string{"a", "b"}
	lns := map[string]net.Listener{}
	peers := map[string]string{}
	for i, id := range ids {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", i+1))
		if err != nil {
			t.Fatal(err)
		}
		lns[id], peers[id] = ln, "https://"+ln.Addr().String()
	}
	dir := t.TempDir()
	// One installation: the controllers talk mutual TLS (issue 11).
	ca, err := roampki.NewCA("k8s-test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	restCA = x509.NewCertPool()
	restCA.AddCert(ca.Cert)
	ctrls := map[string]*controller.Controller{}
	agents := map[string]*agentapi.Client{}
	for i, id := range ids {
		dp := dptest.New(t, dataplane.Config{SNATv4: netip.MustParseAddr("10.99.0.1"), IdleTimeout: time.Minute})
		srv, err := agentapi.NewServer(dp, agentapi.ServerConfig{Token: "agent-tok"})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		t.Cleanup(hs.Close)
		agents[id] = agentapi.New(hs.URL, "agent-tok")
		addr := netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)})
		tdir := filepath.Join(dir, id+"-tls")
		if err := ca.WriteIdentity(tdir, roampki.ID{Cluster: id}, []string{addr.String()}, time.Hour); err != nil {
			t.Fatal(err)
		}
		ident, err := roampki.Load(tdir)
		if err != nil {
			t.Fatal(err)
		}
		c, err := controller.New(ctx, controller.Config{ClusterID: id, Tier: meta.TierEdge, Listener: lns[id],
			AdvertiseURL: peers[id], NATSURL: mo.ClientURL(), Agents: []string{hs.URL}, AgentToken: "agent-tok",
			// No DataAddr, as roam-ctrl --backend kubernetes without
			// --data-addr: a copy is reached at its node's address, which
			// the backend reports from the EndpointSlices.
			FrontendAddr: addr, StorePath: filepath.Join(dir, id+".db"), HelloInterval: 500 * time.Millisecond,
			FailsafeAfter: time.Minute, DrainTimeout: 2 * time.Second, TLS: ident, AllowLoopbackEndpoints: true,
			Users: api.StaticUsers(api.User{Name: "test", Role: api.RoleOperate, Hash: api.HashToken("user-tok")}),
			Peers: peers, Backend: ctrlBackend(t, id), Logger: logger.With("ctrl", id)})
		if err != nil {
			t.Fatalf("controller %s: %v", id, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		ctrls[id] = c
	}

	// Deploy at home through the REST API.
	code, body := restCall(t, peers["a"], "POST", "/v1/services",
		`{"name":"mig","image":"registry.example/mig:1","ports":[{"port":8080,"protocol":"tcp"}],"resources":{"milli_cpu":100,"memory_mb":64}}`)
	if code/100 != 2 {
		t.Fatalf("deploy at a: %d %s; %s", code, body, podTrouble(ctx, a, servicesNS))
	}
	homeDep, err := a.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "mig", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the home copy in cluster a: %v", err)
	}

	// Watch b while the migration runs: the copy appears there, and the
	// real EndpointSlice controller marks an endpoint of it ready.
	var mu sync.Mutex
	var seen *copySeen
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for wctx.Err() == nil {
			ds, err := b.Admin.AppsV1().Deployments(servicesNS).List(wctx, metav1.ListOptions{LabelSelector: kube.LabelManagedBy + "=roam"})
			if err == nil {
				for _, d := range ds.Items {
					sl, _ := b.Admin.DiscoveryV1().EndpointSlices(servicesNS).List(wctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + d.Name})
					s := &copySeen{name: d.Name, home: d.Annotations[kube.AnnotationHome], migration: d.Annotations[kube.AnnotationMigration]}
					if sl != nil {
						for _, x := range sl.Items {
							for _, e := range x.Endpoints {
								if e.Conditions.Ready != nil && *e.Conditions.Ready && e.NodeName != nil {
									s.readyNode = *e.NodeName
								}
							}
						}
					}
					mu.Lock()
					if seen == nil || s.readyNode != "" {
						seen = s
					}
					mu.Unlock()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	code, body = restCall(t, peers["a"], "POST", "/v1/services/mig/migrate", `{"destination":"b","reason":"test/k8s"}`)
	stopWatch()
	<-watched
	var m ctrl.Migration
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("migrate: %d %s", code, body)
	}
	t.Logf("migration a -> b: HTTP %d, state %s, stage %s, error %q, to endpoints %v", code, m.State, m.Stage, m.Error, m.ToEndpoints)
	var stages []string
	for _, s := range m.Stages {
		stages = append(stages, s.Stage.String())
	}

	// Replication happened in b, with the copy fenced by a's migration and
	// ready from b's EndpointSlices.
	mu.Lock()
	s := seen
	mu.Unlock()
	if s == nil {
		t.Fatalf("no copy appeared in cluster b during the migration (stages %v, error %q)", stages, m.Error)
	}
	if s.home != "a" || s.migration != m.ID || s.readyNode == "" {
		t.Fatalf("copy in b: %+v, want home a, migration %s, a ready endpoint", *s, m.ID)
	}
	if !slices.Contains(stages, "replication") || len(m.ToEndpoints) != 1 {
		t.Fatalf("stages %v, to endpoints %v: replication did not report the copy's endpoint", stages, m.ToEndpoints)
	}
	want, err := nodeAddr(ctx, b, s.readyNode)
	if err != nil {
		t.Fatal(err)
	}
	if m.ToEndpoints[0].Addr() != want {
		t.Fatalf("copy's endpoint %v, want the address of node %s (%s) that b's EndpointSlice names", m.ToEndpoints[0], s.readyNode, want)
	}

	// Verify needs the data path kwok does not have: it fails on the
	// copy's endpoint, and the migration is rolled back.
	if code != http.StatusConflict || m.State != ctrl.StateFailed || !strings.Contains(m.Error, "verify "+m.ToEndpoints[0].String()) {
		t.Fatalf("migrate: HTTP %d, state %s, error %q: want a failed verify of %v (no data path under kwok)", code, m.State, m.Error, m.ToEndpoints[0])
	}
	// Rollback through b's apiserver: the copy and its Service are gone.
	if err := tick.Until(ctx, time.Minute, 100*time.Millisecond, func() error {
		ds, err := b.Admin.AppsV1().Deployments(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelManagedBy + "=roam"})
		if err != nil {
			return err
		}
		svcs, err := b.Admin.CoreV1().Services(servicesNS).List(ctx, metav1.ListOptions{LabelSelector: kube.LabelManagedBy + "=roam"})
		if err != nil {
			return err
		}
		if len(ds.Items)+len(svcs.Items) > 0 {
			return fmt.Errorf("after the rollback b still holds %d deployments, %d services", len(ds.Items), len(svcs.Items))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Home: still local, same copy, LB target local.
	r, err := ctrls["a"].Engine.Get("mig")
	if err != nil || r.Kind != ctrl.KindLocal || r.Cluster != "a" {
		t.Fatalf("home record after the rollback: %+v, %v", r, err)
	}
	d, err := a.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "mig", metav1.GetOptions{})
	if err != nil || d.UID != homeDep.UID {
		t.Fatalf("the home copy in a after the rollback: %v", err)
	}
	fe := lb.Frontend{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Proto: lb.TCP}
	svcs, err := agents["a"].List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, sv := range svcs {
		if sv.Frontend == fe {
			found = true
			if sv.Active != lb.Local {
				t.Fatalf("home LB target %v after the rollback, want local", sv.Active)
			}
		}
	}
	if !found {
		t.Fatalf("home agent has no frontend %v: %+v", fe, svcs)
	}
	t.Logf("stages %v; copy %s seen in b ready on %s; rolled back", stages, s.name, s.readyNode)

	// Delete at home removes the copy in a.
	if code, body := restCall(t, peers["a"], "DELETE", "/v1/services/mig", ""); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, body)
	}
	if _, err := a.Admin.AppsV1().Deployments(servicesNS).Get(ctx, "mig", metav1.GetOptions{}); err == nil {
		t.Fatal("the copy in a survived the delete")
	}
}

// restCA is the controllers' CA, for restCall.
var restCA *x509.CertPool

func restCall(t *testing.T, base, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer user-tok")
	req.Header.Set("Content-Type", "application/json")
	c := http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: restCA}}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
