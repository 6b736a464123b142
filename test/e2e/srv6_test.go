package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testbed"
)

// activeTarget reads a frontend's active target from an agent's pinned
// services map (read-only, as roamctl dataplane dump does).
func activeTarget(pin string, f lb.Frontend) (lb.Target, error) {
	ro := &ebpf.LoadPinOptions{ReadOnly: true}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "roam_services"), ro)
	if err != nil {
		return lb.Target{}, err
	}
	defer m.Close()
	slots, err := ebpf.LoadPinnedMap(filepath.Join(pin, "roam_service_slots"), ro)
	if err != nil {
		return lb.Target{}, err
	}
	defer slots.Close()
	var (
		id uint32
		v  dataplane.ServiceValue
	)
	k := dataplane.KeyOf(f)
	if err := m.Lookup(&k, &id); err != nil {
		return lb.Target{}, fmt.Errorf("frontend %s not in %s: %w", f, pin, err)
	}
	if err := slots.Lookup(id, &v); err != nil {
		return lb.Target{}, fmt.Errorf("frontend %s (id %d) in %s: %w", f, id, pin, err)
	}
	return v.Service(f).Active, nil
}

// agentErrors reads roam_agent_api_errors_total{reason} from an agent's metrics.
func agentErrors(ctx context.Context, t *testing.T, ns, reason string) int {
	t.Helper()
	out, err := netns.Cmd(ctx, ns, "curl", "-sf", fmt.Sprintf("http://127.0.0.1:%d/metrics", testbed.AgentMetrics)).Output()
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	m := regexp.MustCompile(`roam_agent_api_errors_total\{reason="` + reason + `"\} (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no roam_agent_api_errors_total{reason=%q} in the agent's metrics", reason)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// metricValue reads one series from an agent's metrics (-1: absent).
func metricValue(ctx context.Context, t *testing.T, ns, series string) float64 {
	t.Helper()
	out, err := netns.Cmd(ctx, ns, "curl", "-sf", fmt.Sprintf("http://127.0.0.1:%d/metrics", testbed.AgentMetrics)).Output()
	if err != nil {
		t.Fatalf("agent metrics in %s: %v", ns, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	return -1
}

// TestSRv6PathModeMigration runs the testbed in srv6 mode (real roam-meta,
// roam-ctrl and roam-agent, mutual TLS, XDP native) and moves a service
// home -> edge -> cloud under short TCP, keep-alive TCP and UDP clients:
// nobody may lose a request; the service sees the camera's own address at
// every location; the home's path goes [edge], then [edge, cloud] (make
// before break, the edge draining its copy) and [cloud] once the edge's
// copy is gone. Then an agent refuses a segment list naming a SID outside
// roam's locators and a return route to a foreign locator's SID, with the
// reason, and counts both.
func TestSRv6PathModeMigration(t *testing.T) {
	need(t)
	const drain = 4 * time.Second
	tb, cfg := launchWith(t, testbed.LaunchConfig{DrainTimeout: drain, Mode: "srv6"})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	home, _ := tb.Cluster("home")
	edge, _ := tb.Cluster("edge")
	cloud, _ := tb.Cluster("cloud")
	cam, _ := tb.Client("camera")
	hc, err := tb.Ctrl("home")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Deploy(ctx, ctrl.Descriptor{Name: "classifier", Demo: true,
		Ports: []backend.Port{{Port: 80, Protocol: lb.TCP}, {Port: 80, Protocol: lb.UDP}}}); err != nil {
		logs(t, tb)
		t.Fatalf("deploy: %v", err)
	}
	feAddr := home.Frontend4("srv6")
	fe := fmt.Sprintf("%s:80", feAddr)
	fT := lb.Frontend{Addr: feAddr, Port: 80, Proto: lb.TCP}
	sid := func(c testbed.Cluster) netip.Addr {
		a, err := lb.NodeSID(testbed.SRv6Locator(c.Index), 0)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	l, wait := startLoad(ctx, t, tb, cam.NS,
		load.Client{Kind: load.Short, Addr: fe, Interval: 20 * time.Millisecond},
		load.Client{Kind: load.KeepAlive, Addr: fe, Conns: 4, Interval: 10 * time.Millisecond},
		load.Client{Kind: load.UDP, Addr: fe, Interval: 5 * time.Millisecond})
	defer l.Stop()
	clientSeen := func(where string) {
		t.Helper()
		hcl := &http.Client{Transport: &http.Transport{DialContext: netns.Dialer(cam.NS), DisableKeepAlives: true}, Timeout: 5 * time.Second}
		ans, err := hcl.Get("http://" + fe + "/")
		if err != nil {
			t.Fatalf("%s: GET: %v", where, err)
		}
		_, _ = io.Copy(io.Discard, ans.Body)
		ans.Body.Close()
		if got := ans.Header.Get("X-Roam-Cluster"); got != where {
			t.Fatalf("answered by %q, want %s", got, where)
		}
		if got := ans.Header.Get("X-Roam-Client"); got != cam.Addr4.String() {
			t.Fatalf("%s saw client %q, want the camera's own %s", where, got, cam.Addr4)
		}
	}
	wait("home")
	clientSeen("home")

	// The home's path, sampled while the moves run.
	var (
		mu    sync.Mutex
		paths []string
	)
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			if tg, err := activeTarget(tb.PinPath("home"), fT); err == nil {
				mu.Lock()
				if len(paths) == 0 || paths[len(paths)-1] != tg.String() {
					paths = append(paths, tg.String())
				}
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	for _, dest := range []string{"edge", "cloud"} {
		m := migrateClassifier(ctx, t, tb, hc, dest)
		if m.State != ctrl.StateDone {
			t.Fatalf("migration to %s: %s %s", dest, m.State, m.Error)
		}
		wait(dest)
		clientSeen(dest)
	}
	// The home shortens [edge, cloud] to [cloud] once the edge's copy
	// must be gone (its drain budget).
	want := []string{"local", lb.SRv6(sid(edge)).String(), lb.SRv6(sid(edge), sid(cloud)).String(), lb.SRv6(sid(cloud)).String()}
	deadline := time.Now().Add(drain + 10*time.Second)
	for {
		mu.Lock()
		got := strings.Join(paths, " -> ")
		mu.Unlock()
		if got == strings.Join(want, " -> ") {
			break
		}
		if time.Now().After(deadline) {
			logs(t, tb)
			t.Fatalf("home's paths %s, want %s", got, strings.Join(want, " -> "))
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopSampling()
	<-sampled
	t.Logf("home's paths: %s", strings.Join(paths, " -> "))
	time.Sleep(500 * time.Millisecond) // requests across the shortening
	clientSeen("cloud")

	rep := l.Stop()
	var b strings.Builder
	rep.Print(&b, 10)
	t.Logf("clients:\n%s", b.String())
	for _, k := range load.Kinds {
		if kr := rep.Kinds[k]; kr.Failed != 0 || kr.Requests == 0 {
			t.Errorf("%s clients: %d of %d requests failed", k, kr.Failed, kr.Requests)
		}
	}

	// Per-frontend metrics of the paths: the home encapsulates along
	// [cloud]; the cloud delivers to its copy; the edge has none left.
	fs := fT.String()
	for _, c := range []struct {
		ns, series string
		min        float64
	}{
		{home.NS, fmt.Sprintf(`roam_dataplane_srv6_path{frontend=%q,path=%q,slot="active"}`, fs, lb.SRv6(sid(cloud)).String()), 1},
		{home.NS, fmt.Sprintf(`roam_dataplane_srv6_packets_total{frontend=%q,step="encap"}`, fs), 100},
		{home.NS, fmt.Sprintf(`roam_dataplane_srv6_packets_total{frontend=%q,step="decap"}`, fs), 100},
		{cloud.NS, fmt.Sprintf(`roam_dataplane_srv6_copy{frontend=%q,state="serving"}`, fs), 1},
		{cloud.NS, fmt.Sprintf(`roam_dataplane_srv6_packets_total{frontend=%q,step="deliver"}`, fs), 100},
	} {
		if v := metricValue(ctx, t, c.ns, c.series); v < c.min {
			t.Errorf("%s: %s = %v, want at least %v", c.ns, c.series, v, c.min)
		}
	}
	if v := metricValue(ctx, t, edge.NS, fmt.Sprintf(`roam_dataplane_srv6_copy{frontend=%q,state="serving"}`, fs)); v != -1 {
		t.Errorf("the edge still reports a copy of %s: %v", fs, v)
	}

	// Bad input at an agent, through its real API (the home controller's
	// identity): a SID outside roam's locators, a foreign locator's SID.
	work, err := tb.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	tls := testbed.CtrlTLSDir(work, "home")
	before := agentErrors(ctx, t, home.NS, "bad_target")
	for _, c := range []struct{ path, body, want string }{
		{"/v1/stage", fmt.Sprintf(`{"frontend":"%s","target":"srv6:fc00:99::1"}`, fT), "outside roam's locators"},
		{"/v1/srv6/returns", fmt.Sprintf(`{"frontends":["%s"],"home_sid":"fc00:99::1"}`, fT), "outside roam's locators"},
	} {
		out, _ := netns.Cmd(ctx, home.NS, "curl", "-s", "-w", " %{http_code}", "--cacert", filepath.Join(tls, "ca.crt"),
			"--cert", filepath.Join(tls, "tls.crt"), "--key", filepath.Join(tls, "tls.key"), "-H", "Content-Type: application/json",
			"-d", c.body, fmt.Sprintf("https://127.0.0.1:%d%s", testbed.AgentAPIPort, c.path)).Output()
		if !strings.HasSuffix(string(out), " 400") || !strings.Contains(string(out), c.want) || !strings.Contains(string(out), `"bad_target"`) {
			t.Errorf("%s %s: %s, want 400 bad_target saying %q", c.path, c.body, out, c.want)
		}
	}
	if after := agentErrors(ctx, t, home.NS, "bad_target"); after-before != 2 {
		t.Errorf("agent counted %d bad_target errors, want 2", after-before)
	}
	if t.Failed() {
		logs(t, tb)
	}
	_ = os.Stdout.Sync()
	assertGone(t, tb, cfg)
}
