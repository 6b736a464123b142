package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/netns"
)

func needRoot(t *testing.T) {
	t.Helper()
	if err := CheckEnv(); err != nil {
		t.Skipf("testbed tests: %v", err)
	}
}

func randName(t *testing.T) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b[:])
}

func testConfig(t *testing.T) Config {
	return Config{
		Name: randName(t),
		Clusters: []ClusterConfig{
			{Name: "home", Tier: "deep-edge", Clients: []string{"camera"}},
			{Name: "edge", Tier: "edge"},
			{Name: "cloud", Tier: "cloud"},
		},
		StateDir: t.TempDir(),
	}
}

// down takes tb down and checks that no namespace of cfg's testbed is
// left.
func down(t *testing.T, tb *Testbed, cfg Config) {
	t.Helper()
	if err := tb.Down(context.Background()); err != nil {
		t.Fatalf("down: %v", err)
	}
	if left := netns.List(Prefix(cfg.Name)); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

func up(t *testing.T, cfg Config) *Testbed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tb, err := Up(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Cleanup(func() {
		if err := Cleanup(context.Background(), cfg, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return tb
}

// serve accepts connections in ns on addr and, for each, writes n bytes
// (n read as the first line) or echoes nothing; it returns the port.
func sink(t *testing.T, ns string, addr netip.Addr) netip.AddrPort {
	t.Helper()
	l, err := netns.Listen(ns, "tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	t.Cleanup(func() { l.Close() })
	netns.Serve(l, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
		_, _ = c.Write([]byte("done"))
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

// transfer sends n bytes from ns to dst and returns the rate in bits/s
// (measured until the receiver acknowledges the end).
func transfer(ctx context.Context, ns string, dst netip.AddrPort, n int) (float64, error) {
	c, err := netns.Dial(ctx, ns, "tcp", dst.String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, fmt.Errorf("read ack: %w", err)
	}
	return float64(n) * 8 / time.Since(start).Seconds(), nil
}

func reachable(ns string, dst netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := netns.Dial(ctx, ns, "tcp", dst.String())
	if err != nil {
		return err
	}
	return c.Close()
}

func TestUpDown(t *testing.T) {
	needRoot(t)
	cfg := testConfig(t)
	tb := up(t, cfg)
	st := tb.Status()
	if len(st.Namespaces) != 5 { // router, 3 nodes, camera
		t.Fatalf("namespaces: %v", st.Namespaces)
	}
	for n, ok := range st.Namespaces {
		if !ok {
			t.Fatalf("netns %s missing", n)
		}
	}
	if _, err := os.Stat(StatePath(cfg)); err != nil {
		t.Fatalf("state file: %v", err)
	}
	cam, err := tb.Client("camera")
	if err != nil {
		t.Fatal(err)
	}
	// The camera reaches every cluster's node, over IPv4 and IPv6, through
	// its home node and the router.
	for _, c := range tb.Clusters() {
		for _, a := range []netip.Addr{c.WAN4, c.WAN6} {
			dst := sink(t, c.NS, a)
			if err := reachable(cam.NS, dst, 10*time.Second); err != nil {
				t.Fatalf("camera -> %s %s: %v", c.Name, dst, err)
			}
		}
	}
	down(t, tb, cfg)
	for n := range st.Namespaces {
		if netns.Exists(n) {
			t.Errorf("netns %s left after down", n)
		}
	}
	if _, err := os.Stat(StatePath(cfg)); !os.IsNotExist(err) {
		t.Errorf("state file left after down: %v", err)
	}
}

func TestUpAfterKilledUp(t *testing.T) {
	needRoot(t)
	cfg := testConfig(t)
	first := up(t, cfg)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	home, _ := first.Cluster("home")
	p, err := first.Start(home.NS, "sleeper", sleep, []string{"300"}, "")
	if err != nil {
		t.Fatal(err)
	}
	work, _ := first.WorkDir()
	if err := first.AddPinPath(filepath.Join(t.TempDir(), "roam-pins")); err != nil {
		t.Fatal(err)
	}
	// A second Up without Down (the first one "was killed") must clean and
	// rebuild.
	second := up(t, cfg)
	if procAlive(p) {
		t.Fatalf("process %d from the first up still runs", p.PID)
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work dir %s left: %v", work, err)
	}
	cam, _ := second.Client("camera")
	cloud, _ := second.Cluster("cloud")
	if err := reachable(cam.NS, sink(t, cloud.NS, cloud.WAN4), 10*time.Second); err != nil {
		t.Fatalf("rebuilt testbed: camera -> cloud: %v", err)
	}
	down(t, second, cfg)
}

func TestShapeCutRestore(t *testing.T) {
	needRoot(t)
	cfg := testConfig(t)
	tb := up(t, cfg)
	home, _ := tb.Cluster("home")
	cloud, _ := tb.Cluster("cloud")
	cam, _ := tb.Client("camera")
	dst := sink(t, cloud.NS, cloud.WAN4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	fast, err := transfer(ctx, home.NS, dst, 8<<20)
	if err != nil {
		t.Fatalf("unshaped transfer: %v", err)
	}
	const rate = 4_000_000
	if _, err := tb.Shape("cloud", rate); err != nil {
		t.Fatal(err)
	}
	if st := tb.Status(); st.Links[2].Qdisc != "tbf" || st.Links[2].Rate != "4mbit" {
		t.Fatalf("status after shape: %+v", st.Links[2])
	}
	slow, err := transfer(ctx, home.NS, dst, 1<<20)
	if err != nil {
		t.Fatalf("shaped transfer: %v", err)
	}
	t.Logf("unshaped %.1f Mbit/s, shaped to 4mbit: %.2f Mbit/s", fast/1e6, slow/1e6)
	if slow > 1.5*rate || slow < 0.3*rate {
		t.Errorf("shaped rate %.2f Mbit/s, want about 4", slow/1e6)
	}
	if fast < 5*slow {
		t.Errorf("unshaped %.1f Mbit/s not clearly above shaped %.1f", fast/1e6, slow/1e6)
	}
	if _, err := tb.Unshape("cloud"); err != nil {
		t.Fatal(err)
	}
	if st := tb.Status(); st.Links[2].Qdisc == "tbf" {
		t.Fatalf("tbf left after unshape: %+v", st.Links[2])
	}

	// Cut the home link: the camera (behind home) loses the cloud; restore
	// brings it back (routes included).
	if _, err := tb.Cut("home"); err != nil {
		t.Fatal(err)
	}
	if err := reachable(cam.NS, dst, time.Second); err == nil {
		t.Fatal("camera reached the cloud across a cut link")
	}
	if err := reachable(home.NS, dst, time.Second); err == nil {
		t.Fatal("home node reached the cloud across a cut link")
	}
	if _, err := tb.Restore("home"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := reachable(cam.NS, dst, 2*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("camera -> cloud after restore: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ev := tb.Events()
	if len(ev) != 4 || ev[0].Kind != "shape" || ev[2].Kind != "cut" || ev[3].Kind != "restore" {
		t.Fatalf("events: %v", ev)
	}
}

func TestConfig(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	p := filepath.Join(t.TempDir(), "tb.yaml")
	os.WriteFile(p, []byte("name: x1\nclusters:\n- name: a\n  tier: edge\n  rate: 10mbit\n  clients: [c]\n- name: b\n  tier: cloud\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil || len(c.Clusters) != 2 || c.Clusters[0].Clients[0] != "c" {
		t.Fatalf("load: %+v %v", c, err)
	}
	for _, bad := range []string{
		"name: X\nclusters: [{name: a, tier: edge}]\n",
		"name: x\nclusters: [{name: a, tier: moon}]\n",
		"name: x\nclusters: [{name: a, tier: edge}, {name: a, tier: edge}]\n",
		"name: x\nclusters: [{name: a, tier: edge, rate: fast}]\n",
		"name: x\nclusters: [{name: a, tier: edge}]\nbogus: 1\n",
		"name: x\nclusters: [{name: a, tier: edge}]\nservices: [{name: s, home: b, port: 80}]\n",
	} {
		os.WriteFile(p, []byte(bad), 0o644)
		if _, err := LoadConfig(p); err == nil {
			t.Errorf("config accepted:\n%s", bad)
		}
	}
	for in, want := range map[string]uint64{"2mbit": 2e6, "500kbit": 5e5, "1gbit": 1e9, "64000": 64000, "1.5mbit": 1.5e6} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v", in, got, err)
		}
	}
	if WANNode6(3).String() != "fd00:16:3::2" || AccessClient4(1).String() != "10.200.1.2" {
		t.Errorf("address plan: %s %s", WANNode6(3), AccessClient4(1))
	}
}

func TestLaunchMetaAndAgents(t *testing.T) {
	needRoot(t)
	mod, err := FindModule(".")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	tb := up(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := tb.LaunchOnly(ctx, LaunchConfig{ModuleDir: mod}, "roam-meta", "roam-agent"); err != nil {
		t.Fatalf("launch: %v", err)
	}
	st := tb.Status()
	if len(st.Procs) != 4 {
		t.Fatalf("procs: %+v", st.Procs)
	}
	for _, p := range st.Procs {
		if !p.Alive {
			t.Fatalf("%s not alive", p.Name)
		}
	}
	// The agents hold XDP on the node's interfaces.
	home, _ := tb.Cluster("home")
	for _, ifname := range home.Ifaces {
		if err := netns.Do(home.NS, func() error {
			l, err := netlink.LinkByName(ifname)
			if err != nil {
				return err
			}
			if x := l.Attrs().Xdp; x == nil || !x.Attached {
				return fmt.Errorf("no XDP program on %s", ifname)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The MO's NATS port is reachable from each cluster through the router.
	for _, c := range tb.Clusters() {
		dst := netip.AddrPortFrom(WANRouter4(c.Index), MetaNATSPort)
		if err := reachable(c.NS, dst, 5*time.Second); err != nil {
			t.Fatalf("%s -> MO %s: %v", c.Name, dst, err)
		}
	}
	// The MO's NATS takes only TLS with the testbed's CA and a cluster's
	// own password, and confines each cluster to its own subjects.
	work, err := tb.workDir()
	if err != nil {
		t.Fatal(err)
	}
	nf, err := tb.ensureNATSCredentials(work)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := ReadPassword(nf.Passwords[home.Name])
	if err != nil {
		t.Fatal(err)
	}
	tlsOpts, err := meta.NATSTLSOptions(nf.CA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	other := tb.Clusters()[1]
	asyncErr := make(chan error, 4)
	var nc *nats.Conn
	if err := netns.Do(home.NS, func() error {
		if c, err := nats.Connect(MetaURL(home.Index), append(tlsOpts, nats.MaxReconnects(0))...); err == nil {
			c.Close()
			return errors.New("connected without credentials")
		}
		if c, err := nats.Connect(MetaURL(home.Index), append(meta.ClusterConnectOptions(home.Name, pw), nats.MaxReconnects(0))...); err == nil {
			c.Close()
			return errors.New("connected without the testbed's CA")
		}
		var err error
		nc, err = nats.Connect(MetaURL(home.Index), append(append(meta.ClusterConnectOptions(home.Name, pw), tlsOpts...),
			nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { asyncErr <- err }))...)
		return err
	}); err != nil {
		t.Fatalf("nats from %s: %v", home.Name, err)
	}
	defer nc.Close()
	if err := nc.Publish(meta.HelloSubject(other.Name), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-asyncErr:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("hello as %s: %v, want a permissions violation", other.Name, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s published %s's hello without a permissions violation", home.Name, other.Name)
	}
	nc.Close()

	pins := tb.PinPath("home")
	if err := tb.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	for _, p := range st.Procs {
		if procAlive(p.Proc) {
			t.Errorf("%s (pid %d) alive after down", p.Name, p.PID)
		}
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pin path %s left after down: %v", pins, err)
	}
}

// TestUpAndLaunchFailureTakesDown: when roam cannot be started (a bin dir
// without its binaries), UpAndLaunch fails, having built the topology
// first, and leaves no namespace behind.
func TestUpAndLaunchFailureTakesDown(t *testing.T) {
	needRoot(t)
	if err := CheckHost(); err != nil {
		t.Skipf("testbed launch: %v", err)
	}
	cfg := testConfig(t)
	t.Cleanup(func() {
		if err := Cleanup(context.Background(), cfg, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wasUp := false
	tb, _, err := UpAndLaunch(ctx, cfg, LaunchConfig{BinDir: t.TempDir()}, nil, func() {
		wasUp = len(netns.List(Prefix(cfg.Name))) > 0
	})
	if err == nil || tb != nil {
		t.Fatalf("launch without binaries: testbed %v, err %v", tb, err)
	}
	if !wasUp {
		t.Error("the topology was not up between Up and Launch")
	}
	if left := netns.List(Prefix(cfg.Name)); len(left) > 0 {
		t.Errorf("namespaces left after a failed launch: %v", left)
	}
}
