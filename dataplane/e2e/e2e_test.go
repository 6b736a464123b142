package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/test/netns"
)

// agentProc is the real roam-agent binary running in the home namespace.
type agentProc struct {
	t       *testing.T
	bin     string
	topo    *netns.Topology
	pinPath string
	// tlsDir is the agent's node identity; ctrl the controller identity
	// the test calls it with (mutual TLS, as a deployed agent runs).
	tlsDir  string
	ctrl    *pki.Source
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

func (a *agentProc) start(ctx context.Context) {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatal(err)
	}
	// nsenter --net switches the network namespace only: unlike ip netns
	// exec it keeps the host's /sys, so the pins land on the host's bpffs
	// and outlive the process (the point of the restart check).
	a.cmd = exec.Command("nsenter", "--net=/run/netns/"+a.topo.Home, a.bin,
		"--iface", "h0,h1", "--xdp-mode", "native",
		"--pin-path", a.pinPath,
		"--snat-addr", netns.HomeWAN.String(),
		"--snat-ports", "40000-40999",
		"--metrics-addr", "127.0.0.1:9700",
		"--api-addr", "127.0.0.1:9701",
		"--tls-dir", a.tlsDir)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		a.t.Fatalf("start roam-agent: %v", err)
	}
	logf.Close()
	a.exited = make(chan struct{})
	go func(cmd *exec.Cmd, ch chan struct{}) {
		_ = cmd.Wait()
		close(ch)
	}(a.cmd, a.exited)
	c := a.client()
	exited := a.exited
	if err := poll(ctx, 60*time.Second, func() error {
		select {
		case <-exited:
			return tick.Final(errAgentExited)
		default:
		}
		return c.Health(ctx)
	}); err != nil {
		a.t.Fatalf("roam-agent not healthy: %v\n%s", err, a.log())
	}
}

func (a *agentProc) stop(sig syscall.Signal) {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd = nil
}

func (a *agentProc) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

func httpIn(ns string) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: netns.Dialer(ns), DisableKeepAlives: true},
	}
}

func (a *agentProc) client() *agentapi.Client {
	c := agentapi.NewTLS("https://127.0.0.1:9701", a.ctrl.ClientConfig(pki.ExpectNodeOf("home")))
	c.SetDialer(netns.Dialer(a.topo.Home))
	return c
}

var errAgentExited = errors.New("roam-agent exited")

// rootWithin skips the test unless it runs as root and returns a context
// that ends after d, or when the test function returns.
func rootWithin(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	netns.SkipUnlessRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// poll calls f every 200 ms until it succeeds, fails with an error
// marked tick.Final (the agent exited), or the timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	return tick.Until(ctx, timeout, 200*time.Millisecond, f)
}

// curl fetches the frontend from the client namespace with the real curl.
func curl(ctx context.Context, topo *netns.Topology, url string) (string, error) {
	out, err := netns.Cmd(ctx, topo.Client, "curl", "-sS", "--max-time", "5", url).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("curl %s: %w: %s", url, err, out)
	}
	return string(out), nil
}

func wantBody(ctx context.Context, t *testing.T, topo *netns.Topology, url, want string) {
	t.Helper()
	var last string
	err := poll(ctx, 30*time.Second, func() error {
		body, err := curl(ctx, topo, url)
		if err != nil {
			return err
		}
		last = body
		if !strings.Contains(body, want) {
			return fmt.Errorf("body %q lacks %q", body, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("curl %s: want %q: %v (last body %q)\n%s", url, want, err, last, diagnose(ctx, topo))
	}
}

func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "roam-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/roamnet/roam/cmd/roam-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go build roam-agent: %v\n%s", err, out)
	}
	return bin
}

type iperfResult struct {
	Start struct {
		Connected []struct {
			LocalPort int `json:"local_port"`
		} `json:"connected"`
	} `json:"start"`
	End struct {
		SumSent struct {
			Seconds float64 `json:"seconds"`
			Bytes   uint64  `json:"bytes"`
		} `json:"sum_sent"`
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			Bytes         uint64  `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

func TestEndToEnd(t *testing.T) {
	netns.SkipUnlessRoot(t)
	for _, tool := range []string{"ip", "nsenter", "curl", "iperf3", "bpftool"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v (make deps)", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	bin := buildAgent(t)
	topo := netns.NewTestTopology(t)

	// Abroad: two targets, each HTTP and an iperf3 relay on one port.
	for i, addr := range []netip.Addr{netns.AbroadAddr1, netns.AbroadAddr2} {
		port := 5201 + i
		stop, err := netns.StartIperfServer(ctx, topo.Abroad, "127.0.0.1", port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		srv, err := netns.StartAbroadServer(topo.Abroad, netip.AddrPortFrom(addr, 8080).String(),
			fmt.Sprintf("abroad-%d", i+1), fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
	}

	ca, err := pki.NewCA("e2e", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	nodeDir, ctrlDir := t.TempDir(), t.TempDir()
	if err := ca.WriteIdentity(nodeDir, pki.ID{Cluster: "home", Node: "n1"}, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteIdentity(ctrlDir, pki.ID{Cluster: "home"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	ctrlID, err := pki.Load(ctrlDir)
	if err != nil {
		t.Fatal(err)
	}
	agent := &agentProc{
		t: t, bin: bin, topo: topo, tlsDir: nodeDir, ctrl: ctrlID,
		pinPath: "/sys/fs/bpf/roam-e2e-" + topo.Suffix,
		logPath: filepath.Join(t.TempDir(), "agent.log"),
	}
	t.Cleanup(func() {
		agent.stop(syscall.SIGTERM)
		if err := dataplane.Unpin(agent.pinPath); err != nil {
			t.Errorf("unpin: %v", err)
		}
		if t.Failed() {
			t.Logf("roam-agent log:\n%s", agent.log())
		}
	})
	agent.start(ctx)
	api := agent.client()

	fe := lb.Frontend{Addr: netns.HomeAddr, Port: 80, Proto: lb.TCP}
	t1 := lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr1, 8080))
	t2 := lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr2, 8080))
	url := "http://" + netip.AddrPortFrom(netns.HomeAddr, 80).String() + "/"

	// 1. Frontend → abroad-1.
	gen, err := api.Stage(ctx, fe, t1)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Commit(ctx, fe, gen); err != nil {
		t.Fatal(err)
	}
	wantBody(ctx, t, topo, url, "hello from abroad-1")

	// 1b. UDP: a frontend to an abroad echo server; the reply comes back
	// from the frontend's address (a connected socket accepts nothing else).
	echo, err := netns.ListenPacket(topo.Abroad, "udp", netip.AddrPortFrom(netns.AbroadAddr1, 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	netns.ServePackets(echo, func(_ net.Addr, p []byte) []byte { return append([]byte("echo from abroad-1: "), p...) })
	feUDP := lb.Frontend{Addr: netns.HomeAddr, Port: 53, Proto: lb.UDP}
	genUDP, err := api.Stage(ctx, feUDP, lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr1, 5353)))
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Commit(ctx, feUDP, genUDP); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 30*time.Second, func() error {
		c, err := netns.Dialer(topo.Client)(ctx, "udp", netip.AddrPortFrom(netns.HomeAddr, 53).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if got := string(buf[:n]); got != "echo from abroad-1: ping" {
			return fmt.Errorf("udp reply %q", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("udp through %s: %v\n%s", feUDP, err, diagnose(ctx, topo))
	}

	// 2. Staging abroad-2 changes nothing until commit.
	gen2, err := api.Stage(ctx, fe, t2)
	if err != nil {
		t.Fatal(err)
	}
	for ok, tries := 0, 0; ok < 5; tries++ {
		body, err := curl(ctx, topo, url)
		switch {
		case err != nil && tries < 20:
			continue // a slow machine: retry, only a wrong answer fails
		case err != nil:
			t.Fatalf("with abroad-2 staged only: %v", err)
		case !strings.Contains(body, "hello from abroad-1"):
			t.Fatalf("with abroad-2 staged only, request %d reached %q, want abroad-1", tries, body)
		}
		ok++
	}

	// 3. A long iperf3 stream through the frontend, to abroad-1.
	const streamSecs = 20
	var (
		iperfOut bytes.Buffer
		iperfErr error
		iperfWG  sync.WaitGroup
	)
	iperf := netns.Cmd(ctx, topo.Client, "iperf3", "-c", netns.HomeAddr.String(), "-p", "80",
		"-t", strconv.Itoa(streamSecs), "-b", "200M", "-J", "--connect-timeout", "5000")
	iperf.Stdout = &iperfOut
	if err := iperf.Start(); err != nil {
		t.Fatalf("start iperf3 client: %v", err)
	}
	iperfWG.Add(1)
	go func() {
		defer iperfWG.Done()
		iperfErr = iperf.Wait()
	}()
	t.Cleanup(func() { _ = iperf.Process.Kill(); iperfWG.Wait() })
	// The control and data connections are pinned to abroad-1.
	if err := poll(ctx, 30*time.Second, func() error {
		n, err := api.Flows(ctx, fe, t1)
		if err == nil && n < 2 {
			err = fmt.Errorf("%d flows on %s, want >= 2 (iperf3 control + data)", n, t1)
		}
		return err
	}); err != nil {
		t.Fatalf("iperf3 flows: %v", err)
	}
	time.Sleep(2 * time.Second) // let the stream run a while before the commit (not synchronisation)

	// 4. Commit abroad-2: new connections go there, the stream stays on abroad-1.
	if err := api.Commit(ctx, fe, gen2); err != nil {
		t.Fatal(err)
	}
	wantBody(ctx, t, topo, url, "hello from abroad-2")
	if n, err := api.Flows(ctx, fe, t1); err != nil || n < 2 {
		t.Fatalf("after commit: %d flows still on %s (%v), want the iperf3 stream's >= 2", n, t1, err)
	}

	// 5. Kill -9 the agent mid-stream: traffic keeps flowing on the pinned
	// links; the restarted agent re-opens the pins and re-attaches.
	agent.stop(syscall.SIGKILL)
	wantBody(ctx, t, topo, url, "hello from abroad-2")
	agent.start(ctx)
	svc, err := api.Get(ctx, fe)
	if err != nil || svc.Active != t2 || svc.Generation != gen2 {
		t.Fatalf("after restart: %+v %v, want %s active at generation %d", svc, err, t2, gen2)
	}
	wantBody(ctx, t, topo, url, "hello from abroad-2")

	// 6. Real scrape of /metrics.
	metrics := scrape(ctx, t, topo)
	if v := metricValue(metrics, "roam_dataplane_packets_total", `frontend="`+fe.String()+`"`, `action="redirect"`); v <= 0 {
		t.Fatalf("roam_dataplane_packets_total{action=redirect} = %v, want > 0\n%s", v, grepLines(metrics, "roam_dataplane"))
	}
	if !strings.Contains(metrics, "go_goroutines") || !strings.Contains(metrics, "roam_agent_api_requests_total") {
		t.Fatalf("metrics lack go_goroutines or roam_agent_api_requests_total")
	}

	// 7. bpftool prints the pinned maps with their field names (BTF).
	for _, m := range []struct{ name, fields string }{
		{"roam_services", "addr,port,proto,family"},
		{"roam_service_slots", "slot,active,generation,port,kind"},
		// This test's flows are IPv4 ones: in roam_ct4 and roam_nat4 (IPv6 flows' roam_conntrack and roam_nat share their value types).
		{"roam_ct4", "saddr,daddr,sport,dport,proto,target_addr,snat_port,state,last_seen"},
		{"roam_nat4", "saddr,daddr,client_addr,front_port,last_seen"},
	} {
		out, err := exec.CommandContext(ctx, "bpftool", "map", "dump", "pinned", filepath.Join(agent.pinPath, m.name)).CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v\n%s", m.name, err, out)
		}
		for _, f := range strings.Split(m.fields, ",") {
			if !strings.Contains(string(out), `"`+f+`"`) {
				t.Fatalf("bpftool map dump %s lacks field %q:\n%.2000s", m.name, f, out)
			}
		}
	}

	// 8. The stream ends without error, having run its full length.
	iperfWG.Wait()
	var res iperfResult
	if err := json.Unmarshal(iperfOut.Bytes(), &res); err != nil {
		t.Fatalf("iperf3 -J output: %v\n%.2000s", err, iperfOut.String())
	}
	if iperfErr != nil || res.Error != "" {
		t.Fatalf("iperf3 stream across the commit and the agent restart failed: %v %q", iperfErr, res.Error)
	}
	if res.End.SumReceived.Seconds < streamSecs-1 || res.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 stream: %.1f s, %d bytes received, want ~%d s and > 0 bytes",
			res.End.SumReceived.Seconds, res.End.SumReceived.Bytes, streamSecs)
	}
	t.Logf("iperf3 stream across commit and agent kill -9: %.1f s, %.0f Mbit/s, %d bytes",
		res.End.SumReceived.Seconds, res.End.SumReceived.BitsPerSecond/1e6, res.End.SumReceived.Bytes)

	// 9. With the stream gone its flows end (FIN), so draining can finish.
	if err := poll(ctx, 30*time.Second, func() error {
		n, err := api.Flows(ctx, fe, t1)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d flows still on %s", n, t1)
		}
		return err
	}); err != nil {
		t.Fatalf("drain: %v", err)
	}

	// 10. SIGTERM leaves the links: traffic still flows with no agent.
	agent.stop(syscall.SIGTERM)
	wantBody(ctx, t, topo, url, "hello from abroad-2")
}

func scrape(ctx context.Context, t *testing.T, topo *netns.Topology) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9700/metrics", nil)
	resp, err := httpIn(topo.Home).Do(req)
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape /metrics: %s", resp.Status)
	}
	return b.String()
}

// metricValue returns the value of the first sample of name whose labels
// contain every one of labels, or -1.
func metricValue(text, name string, labels ...string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// diagnose gathers what explains a failed request: the data plane's counters
// and the interfaces' statistics.
func diagnose(ctx context.Context, topo *netns.Topology) string {
	var b strings.Builder
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9700/metrics", nil)
	if resp, err := httpIn(topo.Home).Do(req); err == nil {
		var mb strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			mb.WriteString(sc.Text() + "\n")
		}
		resp.Body.Close()
		b.WriteString(grepLines(mb.String(), "roam_dataplane") + "\n")
	}
	for _, ns := range []string{topo.Client, topo.Home, topo.Abroad} {
		out, _ := netns.Cmd(ctx, ns, "ip", "-s", "link").CombinedOutput()
		b.WriteString(ns + ":\n" + string(out))
	}
	return b.String()
}
