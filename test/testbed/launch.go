package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/netns"
)

// Binaries roam's processes are built from (package paths in the module).
// roam-demo is not launched: roam-ctrl's local backend runs it as the demo
// service's copies.
var Binaries = []string{"roam-meta", "roam-ctrl", "roam-agent", "roam-demo"}

// Ports the processes listen on inside their namespace.
const (
	MetaNATSPort  = 4222
	MetaHTTPPort  = 9600
	CtrlPort      = 8080
	ProbePort     = 8081
	AgentMetrics  = 9700
	AgentAPIPort  = 9701
	defaultXDPMod = "native"
)

// LaunchConfig says how to run roam's processes on the testbed.
type LaunchConfig struct {
	// BinDir holds roam-meta, roam-ctrl, roam-agent and (optional)
	// roam-demo; empty builds them with `go build` from ModuleDir into the
	// work dir.
	BinDir    string
	ModuleDir string // default: found from the working directory
	XDPMode   string // native (default) or generic
	// HelloInterval, DownAfter, FailsafeAfter and DrainTimeout tune the
	// control plane (defaults 1s, 3, 3s, 10s).
	HelloInterval time.Duration
	DownAfter     int
	FailsafeAfter time.Duration
	DrainTimeout  time.Duration
	// Policy is the MO's placement policy (default tier).
	Policy string
	// TriggerHold, PolicyCooldown and ProbeColdInterval tune the
	// zero-touch triggers and the candidates' bandwidth probes (testbed
	// defaults 3s, 3s, 3s: the experiment's phases last seconds).
	TriggerHold, PolicyCooldown, ProbeColdInterval time.Duration
	// Ready bounds the wait for every /healthz (default 60s).
	Ready time.Duration
	// SNATPool, above 1, gives every agent that many IPv4 SNAT addresses
	// (SNATPool4), assigned to its node's WAN interface; default: the
	// node's WAN address alone.
	SNATPool int
	// Mode is the clusters' redirect mode: "nat" (default) or "srv6":
	// every cluster then announces the locator SRv6Locator(i) over the
	// IPv6 WAN (the router routes it to the node), its agent has the SID
	// lb.NodeSID(locator, 0) and every cluster's locator, and its
	// frontends are on SRv6Frontend4(i) (a service address on the node's
	// lo, which an abroad location also puts on its lo while it runs a
	// copy: the copy answers from it; the WAN address stays the
	// controller's and the copies' own).
	Mode string
}

// Mode is the redirect mode roam was launched in (nat or srv6; empty
// before Launch).
func (tb *Testbed) Mode() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.st.Mode
}

// SRv6Locator is cluster i's SRv6 locator in srv6 mode: fc00:0:i::/48.
func SRv6Locator(i int) netip.Prefix {
	var b [16]byte
	b[0], b[1], b[4], b[5] = 0xfc, 0x00, byte(i>>8), byte(i)
	return netip.PrefixFrom(netip.AddrFrom16(b), 48)
}

// SRv6Frontend4 is cluster i's frontend address in srv6 mode: 10.201.i.1.
func SRv6Frontend4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 201, byte(i), 1}) }

// Frontend4 is the address cluster c's frontends are on in mode (see
// LaunchConfig.Mode).
func (c Cluster) Frontend4(mode string) netip.Addr {
	if mode == "srv6" {
		return SRv6Frontend4(c.Index)
	}
	return c.WAN4
}

// setupSRv6 routes every cluster's locator to its node at the router and
// puts the cluster's frontend address on its node's lo.
func (tb *Testbed) setupSRv6() error {
	for _, c := range tb.Clusters() {
		err := netns.Handle(tb.RouterNS(), func(h *netlink.Handle) error {
			l, err := h.LinkByName(c.RouterIf)
			if err != nil {
				return fmt.Errorf("find %s: %w", c.RouterIf, err)
			}
			loc := SRv6Locator(c.Index)
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: loc.Addr().AsSlice(), Mask: net.CIDRMask(48, 128)}, Gw: c.WAN6.AsSlice()}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("route %s via %s: %w", loc, c.WAN6, err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("srv6 mode: %w", err)
		}
		if err := addHostAddrs(c.NS, "lo", SRv6Frontend4(c.Index), 1); err != nil {
			return fmt.Errorf("srv6 mode: %w", err)
		}
	}
	return nil
}

// SNATPool4 is cluster i's IPv4 SNAT pool of n addresses: 172.16.i.100 on.
func SNATPool4(i, n int) (first, last netip.Addr) {
	return netip.AddrFrom4([4]byte{172, 16, byte(i), 100}), netip.AddrFrom4([4]byte{172, 16, byte(i), byte(99 + n)})
}

// Secrets are what a user of the testbed needs: `testbed run` and the e2e
// tests use UserToken on the controllers' REST API (an operate user of
// the controllers' --users-file; see tls.go for the certificates).
type Secrets struct {
	UserToken string `json:"user_token"`
}

// UpAndLaunch checks the host (CheckHost), builds the topology (Up) and
// starts roam in it (Launch); when the launch fails (or ctx ends) it takes
// the testbed down again. up, when not nil, is called between the two
// (the topology is up, roam not started yet).
func UpAndLaunch(ctx context.Context, cfg Config, lc LaunchConfig, log *slog.Logger, up func()) (*Testbed, Secrets, error) {
	if err := CheckHost(); err != nil {
		return nil, Secrets{}, err
	}
	tb, err := Up(ctx, cfg, log)
	if err != nil {
		return nil, Secrets{}, err
	}
	if up != nil {
		up()
	}
	sec, err := tb.Launch(ctx, lc)
	if err != nil {
		return nil, Secrets{}, errors.Join(err, tb.Down(context.WithoutCancel(ctx)))
	}
	return tb, sec, nil
}

// FindModule walks up from dir to the directory holding go.mod.
func FindModule(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("find go.mod above %s: not found (run from the roam source tree or pass a bin dir)", dir)
		}
		d = parent
	}
}

// Build compiles roam's binaries (names from Binaries; all when none are
// given) into outDir.
func Build(ctx context.Context, moduleDir, outDir string, names ...string) error {
	if len(names) == 0 {
		names = Binaries
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("create bin dir: %w", err)
	}
	args := []string{"build", "-o", outDir + "/"}
	for _, b := range names {
		if _, err := os.Stat(filepath.Join(moduleDir, "cmd", b)); err != nil {
			return fmt.Errorf("build %s: cmd/%s is missing from %s", b, b, moduleDir)
		}
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = moduleDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build roam binaries: %w\n%s", err, out)
	}
	return nil
}

// PinPath is where cluster's agent pins its maps.
func (tb *Testbed) PinPath(cluster string) string {
	root := tb.st.Config.PinRoot
	if root == "" {
		root = "/sys/fs/bpf"
	}
	return filepath.Join(root, "roam-"+tb.st.Name+"-"+cluster)
}

// CtrlURL is cluster's controller REST base URL (reachable from the
// cluster's namespace and, through the router, from every other one).
func (c Cluster) CtrlURL() string { return fmt.Sprintf("https://%s:%d", c.WAN4, CtrlPort) }

// MetaURL is the NATS URL of the MO as cluster i reaches it.
func MetaURL(i int) string { return fmt.Sprintf("nats://%s:%d", WANRouter4(i), MetaNATSPort) }

func (lc *LaunchConfig) defaults() {
	if lc.XDPMode == "" {
		lc.XDPMode = defaultXDPMod
	}
	if lc.Mode == "" {
		lc.Mode = "nat"
	}
	if lc.HelloInterval == 0 {
		lc.HelloInterval = time.Second
	}
	if lc.DownAfter == 0 {
		lc.DownAfter = 3
	}
	if lc.FailsafeAfter == 0 {
		lc.FailsafeAfter = 3 * time.Second
	}
	if lc.DrainTimeout == 0 {
		lc.DrainTimeout = 10 * time.Second
	}
	if lc.Policy == "" {
		lc.Policy = "tier"
	}
	if lc.Ready == 0 {
		lc.Ready = 60 * time.Second
	}
	if lc.TriggerHold == 0 {
		lc.TriggerHold = 3 * time.Second
	}
	if lc.PolicyCooldown == 0 {
		lc.PolicyCooldown = 3 * time.Second
	}
	if lc.ProbeColdInterval == 0 {
		lc.ProbeColdInterval = 3 * time.Second
	}
}

// Launch starts roam-meta on the router and, in every cluster, roam-agent
// (XDP on the node's interfaces) and roam-ctrl (local backend), and waits
// until every /healthz answers.
func (tb *Testbed) Launch(ctx context.Context, lc LaunchConfig) (Secrets, error) {
	return tb.LaunchOnly(ctx, lc, Binaries...)
}

// LaunchOnly is Launch restricted to some of Binaries (in their order: the
// MO, then the agents, then the controllers).
func (tb *Testbed) LaunchOnly(ctx context.Context, lc LaunchConfig, which ...string) (Secrets, error) {
	lc.defaults()
	want := map[string]bool{}
	for _, w := range which {
		want[w] = true
	}
	work, err := tb.workDir()
	if err != nil {
		return Secrets{}, err
	}
	bin := lc.BinDir
	if bin == "" {
		mod := lc.ModuleDir
		if mod == "" {
			wd, _ := os.Getwd()
			if mod, err = FindModule(wd); err != nil {
				return Secrets{}, err
			}
		}
		bin = filepath.Join(work, "bin")
		tb.log.Info("building roam binaries", "module", mod, "out", bin, "which", which)
		if err := Build(ctx, mod, bin, which...); err != nil {
			return Secrets{}, err
		}
	}
	for _, b := range which {
		if b == "roam-demo" {
			continue // optional: without it roam-ctrl runs the demo itself
		}
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return Secrets{}, fmt.Errorf("launch: %s not found in %s", b, bin)
		}
	}
	tok, err := tb.makePKI(work)
	if err != nil {
		return Secrets{}, fmt.Errorf("launch: make certificates: %w", err)
	}
	sec := Secrets{UserToken: tok}
	var nf NATSFiles
	if want["roam-meta"] || want["roam-ctrl"] {
		if nf, err = tb.ensureNATSCredentials(work); err != nil {
			return Secrets{}, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, lc.Ready)
	defer cancel()

	if want["roam-meta"] {
		metaDir := filepath.Join(work, "meta")
		if err := os.MkdirAll(metaDir, 0o755); err != nil {
			return Secrets{}, fmt.Errorf("create meta store dir: %w", err)
		}
		mp, err := tb.Start(tb.st.Router, "roam-meta", filepath.Join(bin, "roam-meta"), []string{
			"--listen", fmt.Sprintf("0.0.0.0:%d", MetaNATSPort),
			"--http-addr", fmt.Sprintf("0.0.0.0:%d", MetaHTTPPort),
			"--store-dir", metaDir,
			"--policy", lc.Policy,
			"--hello-interval", lc.HelloInterval.String(),
			"--down-after", fmt.Sprint(lc.DownAfter),
			"--auth-file", nf.Auth,
			"--tls-cert", nf.ServerCert, "--tls-key", nf.ServerKey,
		}, fmt.Sprintf("http://127.0.0.1:%d/healthz", MetaHTTPPort))
		if err != nil {
			return Secrets{}, err
		}
		if err := tb.WaitHealthy(rctx, mp, mp.Health); err != nil {
			return Secrets{}, err
		}
	}
	if lc.Mode != "nat" && lc.Mode != "srv6" {
		return Secrets{}, fmt.Errorf("launch: mode %q: want nat or srv6", lc.Mode)
	}
	var locators []string
	if lc.Mode == "srv6" {
		if err := tb.setupSRv6(); err != nil {
			return Secrets{}, err
		}
		for _, c := range tb.Clusters() {
			locators = append(locators, SRv6Locator(c.Index).String())
		}
	}
	if want["roam-agent"] {
		err := tb.startEach(rctx, bin, "roam-agent", fmt.Sprintf("http://127.0.0.1:%d/healthz", AgentMetrics), func(c Cluster) ([]string, error) {
			pin := tb.PinPath(c.Name)
			if err := tb.AddPinPath(pin); err != nil {
				return nil, err
			}
			snat := c.WAN4.String() + "," + c.WAN6.String()
			if lc.SNATPool > 1 {
				first, last := SNATPool4(c.Index, lc.SNATPool)
				if err := addHostAddrs(c.NS, NodeWANIf, first, lc.SNATPool); err != nil {
					return nil, err
				}
				snat = first.String() + "-" + last.String() + "," + c.WAN6.String()
			}
			args := []string{
				"--iface", strings.Join(c.Ifaces, ","),
				"--xdp-mode", lc.XDPMode,
				"--pin-path", pin,
				"--snat-addr", snat,
				"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", AgentMetrics),
				"--api-addr", fmt.Sprintf("127.0.0.1:%d", AgentAPIPort),
				"--tls-dir", AgentTLSDir(work, c.Name),
			}
			if lc.Mode == "srv6" {
				sid, err := lb.NodeSID(SRv6Locator(c.Index), 0)
				if err != nil {
					return nil, err
				}
				args = append(args, "--srv6-sid", sid.String(), "--srv6-locators", strings.Join(locators, ","))
			}
			return args, nil
		})
		if err != nil {
			return Secrets{}, err
		}
	}
	if want["roam-ctrl"] {
		err := tb.startEach(rctx, bin, "roam-ctrl", fmt.Sprintf("https://127.0.0.1:%d/healthz", CtrlPort), func(c Cluster) ([]string, error) {
			cc := tb.st.Config.Clusters[c.Index-1]
			var labels []string
			for k, v := range cc.Labels {
				labels = append(labels, k+"="+v)
			}
			args := []string{
				"--cluster-id", c.Name,
				"--tier", c.Tier,
				"--api-addr", fmt.Sprintf("0.0.0.0:%d", CtrlPort),
				"--advertise-url", c.CtrlURL(),
				"--nats-url", MetaURL(c.Index),
				"--nats-password-file", nf.Passwords[c.Name],
				"--nats-tls-ca", nf.CA,
				"--agents", fmt.Sprintf("https://127.0.0.1:%d", AgentAPIPort),
				"--tls-dir", CtrlTLSDir(work, c.Name),
				"--users-file", UsersFile(work),
				"--frontend-addr", c.Frontend4(lc.Mode).String(),
				"--data-addr", c.WAN4.String(),
				"--backend", "local",
				"--store", filepath.Join(work, "ctrl-"+c.Name+".db"),
				"--hello-interval", lc.HelloInterval.String(),
				"--failsafe-after", lc.FailsafeAfter.String(),
				"--drain-timeout", lc.DrainTimeout.String(),
				"--probe-addr", fmt.Sprintf("%s:%d", c.WAN4, ProbePort),
				"--trigger-hold", lc.TriggerHold.String(),
				"--policy-cooldown", lc.PolicyCooldown.String(),
				"--probe-cold-interval", lc.ProbeColdInterval.String(),
			}
			if len(labels) > 0 {
				args = append(args, "--labels", strings.Join(labels, ","))
			}
			if lc.Mode == "srv6" {
				args = append(args, "--redirect-mode", "srv6", "--srv6-locator", SRv6Locator(c.Index).String())
			}
			return args, nil
		})
		if err != nil {
			return Secrets{}, err
		}
		if want["roam-meta"] {
			// Every controller runs now: wait until the MO has a hello from
			// each cluster sent after this point, then until every
			// controller's /readyz lists every cluster by name in its
			// directory, synced. The controllers follow the MO's compact
			// view, which the MO writes in batches after the hellos, not
			// the hellos: without the second wait a
			// migration right after the launch finds its destination
			// unknown at the home (400), or its home unknown at the
			// destination (403 unknown_cluster).
			if err := tb.waitHellos(rctx, time.Now()); err != nil {
				return Secrets{}, err
			}
			if err := tb.waitDirectories(rctx); err != nil {
				return Secrets{}, err
			}
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.st.Secrets = sec
	tb.st.Mode = lc.Mode
	return sec, tb.save()
}

// startEach starts prog from bin in every cluster's namespace (named
// prog-<cluster>, with args(c)) and waits until each answers at health
// (polled inside its namespace).
func (tb *Testbed) startEach(ctx context.Context, bin, prog, health string, args func(c Cluster) ([]string, error)) error {
	var ps []Proc
	for _, c := range tb.Clusters() {
		a, err := args(c)
		if err != nil {
			return err
		}
		p, err := tb.Start(c.NS, prog+"-"+c.Name, filepath.Join(bin, prog), a, health)
		if err != nil {
			return err
		}
		ps = append(ps, p)
	}
	return tb.waitAll(ctx, ps)
}

func (tb *Testbed) waitAll(ctx context.Context, ps []Proc) error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() { errs[i] = tb.WaitHealthy(ctx, p, p.Health) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("launch: %w", err)
	}
	return nil
}

// waitHellos polls the MO's /v1/clusters until every cluster is up with a
// hello seen after since.
func (tb *Testbed) waitHellos(ctx context.Context, since time.Time) error {
	hc := HTTPClient(tb.st.Router, 2*time.Second)
	defer hc.CloseIdleConnections()
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/clusters", MetaHTTPPort)
	var missing []string
	for {
		missing = missing[:0]
		var cs []meta.ClusterStatus
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&cs)
			resp.Body.Close()
		}
		seen := map[string]bool{}
		for _, c := range cs {
			if c.LastSeen.After(since) {
				seen[c.Hello.ClusterID] = true
			}
		}
		for _, c := range tb.Clusters() {
			if !seen[c.Name] {
				missing = append(missing, c.Name)
			}
		}
		if err == nil && len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("launch: the MO has no fresh hello from %v: %w (last error: %v)", missing, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitDirectories waits until every controller's directory is the MO's
// view and lists every cluster of the testbed (WaitDirectory).
func (tb *Testbed) waitDirectories(ctx context.Context) error {
	for _, c := range tb.Clusters() {
		if err := tb.WaitDirectory(ctx, c); err != nil {
			return fmt.Errorf("launch: %w", err)
		}
	}
	return nil
}

// WaitDirectory polls c's controller's /readyz until it is ready with its
// directory synced with the MO's view (not the one saved before a
// restart) and listing every cluster of the testbed by name. Without an
// MO (static peers) ready is enough.
func (tb *Testbed) WaitDirectory(ctx context.Context, c Cluster) error {
	hc := tb.HTTPSClient(c.NS, 2*time.Second)
	defer hc.CloseIdleConnections()
	url := fmt.Sprintf("https://127.0.0.1:%d/readyz", CtrlPort)
	var last error
	for {
		last = directoryReady(ctx, hc, url, tb.Clusters())
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("roam-ctrl-%s's directory: %w (last: %v)", c.Name, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func directoryReady(ctx context.Context, hc *http.Client, url string, want []Cluster) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Detail struct {
			Directory struct {
				State    string   `json:"state"`
				Clusters []string `json:"clusters"`
			} `json:"directory"`
		} `json:"detail"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("readyz %s: %w", resp.Status, err)
	}
	d := r.Detail.Directory
	if resp.StatusCode != http.StatusOK || (d.State != "synced" && d.State != "static") {
		return fmt.Errorf("readyz %s, directory %s", resp.Status, d.State)
	}
	var missing []string
	for _, c := range want {
		if !slices.Contains(d.Clusters, c.Name) {
			missing = append(missing, c.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("directory %s lists %v, not %v", d.State, d.Clusters, missing)
	}
	return nil
}

// addHostAddrs assigns n consecutive IPv4 addresses from first (each a /32)
// to dev in ns, if not there yet.
func addHostAddrs(ns, dev string, first netip.Addr, n int) error {
	return netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", dev, ns, err)
		}
		a := first
		for i := 0; i < n; i++ {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}
			if err := h.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add SNAT address %s to %s in %s: %w", a, dev, ns, err)
			}
			a = a.Next()
		}
		return nil
	})
}
