package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/demo/demotest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/testport"
)

// TestMain lets the test binary double as the demo service the backend runs.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == demoBinary {
		// As roam-demo (TestDemoExecutable): the demo's flags only.
		demotest.Serve(os.Args[1:])
	}
	demotest.ServeIfAsked()
	if len(os.Args) > 1 && os.Args[1] == "stubborn" {
		// A service that ignores SIGTERM.
		signal.Ignore(syscall.SIGTERM)
		ln, err := net.Listen("tcp", os.Getenv("ROAM_LISTEN"))
		if err != nil {
			os.Exit(1)
		}
		for {
			c, err := ln.Accept()
			if err == nil {
				c.Close()
			}
		}
	}
	os.Exit(m.Run())
}

// open starts a backend of cluster c1 on the loopback address, closed at
// the end of the test.
func open(t *testing.T, cfg Config) *Backend {
	t.Helper()
	cfg.ClusterID, cfg.ListenAddr, cfg.ExposeAddr = "c1", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1")
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newBackend(t *testing.T) *Backend {
	t.Helper()
	return open(t, Config{Pods: 4, MilliCPU: 1000, MemoryMB: 1024, MinBackoff: 20 * time.Millisecond})
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// killAndWaitRestart kills the copy of "web" (pid) and waits until b's
// supervisor has restarted it and it is ready again; it returns the new
// copy's PID.
func killAndWaitRestart(ctx context.Context, t *testing.T, b *Backend, pid int) int {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if np := b.PID("web"); np != 0 && np != pid {
			if i, err := b.Get(ctx, "web"); err == nil && i.Ready {
				return np
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy %d not restarted after it died", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeployDemoRestartDelete(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := backend.Spec{Name: "web", Home: "c0", Demo: true,
		Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}, Resources: backend.Resources{MilliCPU: 100, MemoryMB: 64}}
	inst, err := b.Deploy(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !inst.Ready || len(inst.Endpoints) != 1 || inst.Home != "c0" {
		t.Fatalf("instance %+v", inst)
	}
	if body := get(t, "http://"+inst.Endpoints[0].String()+"/"); !strings.HasPrefix(body, "cluster c1 ") {
		t.Fatalf("demo answered %q", body)
	}
	// Same spec again: the running instance.
	if _, err := b.Deploy(ctx, spec); err != nil {
		t.Fatalf("redeploy same spec: %v", err)
	}
	c, _ := b.Capacity(ctx)
	if c.UsedPods != 1 || c.UsedMilliCPU != 100 || c.Pods != 4 {
		t.Fatalf("capacity %+v", c)
	}
	// Crash: the supervisor restarts it.
	killAndWaitRestart(ctx, t, b, b.PID("web"))
	if b.Restarts("web") < 1 {
		t.Fatal("restart not counted")
	}
	l, _ := b.List(ctx)
	if len(l) != 1 || l[0].Name != "web" {
		t.Fatalf("list %+v", l)
	}
	pid := b.PID("web")
	if err := b.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("process %d still alive after delete", pid)
	}
	if _, err := b.Get(ctx, "web"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := b.Delete(ctx, "web"); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
}

func TestDeployRefusals(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Deploy(ctx, backend.Spec{Name: "Bad Name", Demo: true, Ports: []backend.Port{{Port: 1, Protocol: lb.TCP}}}); err == nil {
		t.Fatal("bad name accepted")
	}
	if _, err := b.Deploy(ctx, backend.Spec{Name: "big", Demo: true, Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}},
		Resources: backend.Resources{MilliCPU: 5000}}); err == nil || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("over capacity: %v", err)
	}
	// A command that never listens: Deploy gives up with ctx and leaves nothing.
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	if _, err := b.Deploy(sctx, backend.Spec{Name: "sleeper", Command: []string{"sleep", "60"},
		Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}); err == nil {
		t.Fatal("never-ready copy reported ready")
	}
	if l, _ := b.List(ctx); len(l) != 0 {
		t.Fatalf("left behind %+v", l)
	}
}

// abandon stops supervising every copy without killing it, as a killed
// controller would.
func (b *Backend) abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for n, r := range b.runs {
		r.detached.Store(true)
		r.cancel()
		<-r.done
		delete(b.runs, n)
	}
}

// crashed is a controller killed while its copy of "web" runs: a backend
// with a state dir deployed spec, then stopped supervising it without
// killing it (the copy keeps serving). It returns that backend (its copy's
// PID is pid) and the config a restarted controller uses.
func crashed(ctx context.Context, t *testing.T) (b1 *Backend, cfg Config, spec backend.Spec, pid int) {
	t.Helper()
	cfg = Config{StateDir: t.TempDir(), MinBackoff: 20 * time.Millisecond}
	b1 = open(t, cfg)
	spec = backend.Spec{Name: "web", Home: "c0", Demo: true, Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}
	if _, err := b1.Deploy(ctx, spec); err != nil {
		t.Fatal(err)
	}
	pid = b1.PID("web")
	b1.abandon()
	return b1, cfg, spec, pid
}

func TestAdoptAfterCrash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, cfg, spec, pid := crashed(ctx, t) // the controller dies; the copy keeps serving
	dir := cfg.StateDir

	b2 := open(t, cfg)
	if got := b2.PID("web"); got != pid {
		t.Fatalf("adopted pid %d, want %d", got, pid)
	}
	// Same spec: the adopted copy is the running instance.
	inst, err := b2.Deploy(ctx, spec)
	if err != nil || !inst.Ready {
		t.Fatalf("deploy adopted: %+v %v", inst, err)
	}
	if b2.PID("web") != pid {
		t.Fatal("adopted copy replaced")
	}
	if body := get(t, "http://"+inst.Endpoints[0].String()+"/"); !strings.HasPrefix(body, "cluster c1 ") {
		t.Fatalf("adopted copy answered %q", body)
	}
	// It dies: the new supervisor restarts it.
	np := killAndWaitRestart(ctx, t, b2, pid)
	if err := b2.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(np, 0); err == nil {
		t.Fatalf("process %d alive after delete", np)
	}
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Fatalf("state left: %v", files)
	}
}

// TestCopyEnvironmentIsMinimal: a copy gets an explicit environment, never
// the controller's (which may hold its secrets).
func TestCopyEnvironmentIsMinimal(t *testing.T) {
	const secret = "s3cret-must-not-leak"
	t.Setenv("ROAM_PEER_SECRET", secret)
	t.Setenv("ROAM_TOKEN", secret)
	t.Setenv("SOME_OTHER", secret)
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := backend.Spec{Name: "web", Home: "c0", Demo: true, Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}
	if _, err := b.Deploy(ctx, spec); err != nil {
		t.Fatal(err)
	}
	pid := b.PID("web")
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, kv := range strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00") {
		if strings.Contains(kv, secret) {
			t.Errorf("copy's environment holds the controller's secret: %q", kv)
		}
		k, _, _ := strings.Cut(kv, "=")
		names = append(names, k)
	}
	want := []string{"PATH", "ROAM_LISTEN", "ROAM_PORT", "ROAM_CLUSTER", "ROAM_SERVICE", "ROAM_HOME"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("copy's environment names %v, want %v", names, want)
	}
}

// TestDeleteIsGraceful: a copy that ignores SIGTERM is killed when the
// grace period is over, or sooner when Delete's context ends; the demo
// service exits by itself at once.
func TestDeleteIsGraceful(t *testing.T) {
	b := open(t, Config{MinBackoff: 20 * time.Millisecond, GracePeriod: 700 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stubborn := func(name string) int {
		t.Helper()
		if _, err := b.Deploy(ctx, backend.Spec{Name: name, Command: []string{os.Args[0], "stubborn"},
			Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}); err != nil {
			t.Fatal(err)
		}
		return b.PID(name)
	}
	deleted := func(name string, dctx context.Context, pid int) time.Duration {
		t.Helper()
		t0 := time.Now()
		if err := b.Delete(dctx, name); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		d := time.Since(t0)
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("%s (pid %d) alive after delete", name, pid)
		}
		if b.PID(name) != 0 || b.Restarts(name) != 0 {
			t.Fatalf("%s restarted after delete", name)
		}
		return d
	}

	pid := stubborn("slow")
	if d := deleted("slow", ctx, pid); d < 600*time.Millisecond || d > 5*time.Second {
		t.Errorf("stubborn copy deleted in %v, want the 700ms grace period", d)
	}
	pid = stubborn("cut")
	dctx, dcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer dcancel()
	if d := deleted("cut", dctx, pid); d > 600*time.Millisecond {
		t.Errorf("stubborn copy deleted in %v, want Delete's 100ms context", d)
	}
	// The demo exits by itself once quiet for its linger (1.2s), well
	// before a grace period that would kill it.
	b = open(t, Config{MinBackoff: 20 * time.Millisecond, GracePeriod: 10 * time.Second})
	if _, err := b.Deploy(ctx, backend.Spec{Name: "web", Demo: true,
		Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}); err != nil {
		t.Fatal(err)
	}
	if d := deleted("web", ctx, b.PID("web")); d < time.Second || d > 5*time.Second {
		t.Errorf("demo copy deleted in %v: it should exit at SIGTERM once quiet for its 1.2s linger", d)
	}
}

// TestDemoAnswersUDP: the demo copy answers on its UDP ports too.
func TestDemoAnswersUDP(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port := testport.Free(t)
	inst, err := b.Deploy(ctx, backend.Spec{Name: "dns", Demo: true,
		Ports: []backend.Port{{Port: port, Protocol: lb.TCP}, {Port: port, Protocol: lb.UDP}}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("udp", inst.Endpoints[1].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("q1")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "cluster c1 ") || !strings.HasSuffix(string(buf[:n]), "q1") {
		t.Fatalf("udp answer %q, %v", buf[:n], err)
	}
}

// TestRedeployWhileStopping: a copy is being stopped (a drain still running
// in its grace period) when the same service is deployed again, as when a
// service moves back home before its old copy here has gone. The new copy
// needs the same port: Deploy waits for the old one to exit, and the copy
// answering afterwards is the new one, not the old one that answered the
// readiness probe on its way out.
func TestRedeployWhileStopping(t *testing.T) {
	b := open(t, Config{MinBackoff: 20 * time.Millisecond, GracePeriod: 800 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port := testport.Free(t)
	ports := []backend.Port{{Port: port, Protocol: lb.TCP}}
	if _, err := b.Deploy(ctx, backend.Spec{Name: "web", Command: []string{os.Args[0], "stubborn"}, Ports: ports}); err != nil {
		t.Fatal(err)
	}
	old := b.PID("web")
	deleted := make(chan error, 1)
	go func() { deleted <- b.Delete(ctx, "web") }()
	// The stop has begun: the copy no longer counts as running.
	for {
		if _, err := b.Get(ctx, "web"); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	t0 := time.Now()
	inst, err := b.Deploy(ctx, backend.Spec{Name: "web", Home: "c0", Demo: true, Ports: ports})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d < 500*time.Millisecond {
		t.Errorf("deploy took %v: it did not wait for the stopping copy (800ms grace)", d)
	}
	if err := syscall.Kill(old, 0); err == nil {
		t.Fatalf("old copy (pid %d) still alive after the new deploy", old)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	if got := get(t, "http://"+inst.Endpoints[0].String()+"/"); !strings.HasPrefix(got, "cluster c1 ") {
		t.Fatalf("new copy answers %q", got)
	}
	if b.Restarts("web") != 0 {
		t.Fatalf("new copy restarted %d times (port taken?)", b.Restarts("web"))
	}
	// A Delete that finds the copy already stopping waits for the same end.
	if _, err := b.Deploy(ctx, backend.Spec{Name: "slow", Command: []string{os.Args[0], "stubborn"},
		Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}); err != nil {
		t.Fatal(err)
	}
	pid := b.PID("slow")
	go func() { _ = b.Delete(ctx, "slow") }()
	for {
		if _, err := b.Get(ctx, "slow"); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := b.Delete(ctx, "slow"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("second Delete returned while the copy (pid %d) still runs", pid)
	}
}

// TestReadyOnlyWithOwnSocket: another tenant already answers on the port
// (here an HTTP server that says 200 to everything). The new copy cannot
// bind; the readiness probe alone would pass through the tenant's socket,
// but the copy's own process holds no socket of that port, so Deploy
// fails instead of reporting a copy that is not there.
func TestReadyOnlyWithOwnSocket(t *testing.T) {
	b := newBackend(t)
	port := testport.Free(t)
	ln, err := net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "other tenant") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := b.Deploy(ctx, backend.Spec{Name: "shop", Demo: true, Ports: []backend.Port{{Port: port, Protocol: lb.TCP}}}); err == nil {
		t.Fatal("a copy that could not bind its port was reported ready (the other tenant answered its probe)")
	}
	// With its own socket it is ready, UDP included.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := b.Deploy(ctx, backend.Spec{Name: "shop", Demo: true,
		Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}, {Port: testport.Free(t), Protocol: lb.UDP}}})
	if err != nil || !inst.Ready {
		t.Fatalf("deploy with free ports: %+v, %v", inst, err)
	}
	if !ownsPort(b.PID("shop"), inst.Endpoints[1].Port(), lb.UDP) || ownsPort(b.PID("shop"), port, lb.TCP) {
		t.Fatal("socket ownership misread")
	}
}

// TestNoSharedPort: two copies cannot share (address, port, protocol) at
// one cluster; the same port with the other protocol is fine.
func TestNoSharedPort(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	port := testport.Free(t)
	if _, err := b.Deploy(ctx, backend.Spec{Name: "one", Demo: true, Ports: []backend.Port{{Port: port, Protocol: lb.TCP}}}); err != nil {
		t.Fatal(err)
	}
	_, err := b.Deploy(ctx, backend.Spec{Name: "two", Demo: true, Ports: []backend.Port{{Port: port, Protocol: lb.TCP}}})
	if err == nil || !strings.Contains(err.Error(), "taken by copy \"one\"") {
		t.Fatalf("a second copy on the same port: %v", err)
	}
	if _, err := b.Get(ctx, "two"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the refused copy exists: %v", err)
	}
}

// TestRedeployRelabels: deploying the same workload with a new fence (a
// take-back's retry, a move back to a cluster whose copy still runs)
// reuses the running copy and relabels it; a different workload under the
// name is refused.
func TestRedeployRelabels(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := backend.Spec{Name: "web", Home: "c0", MigrationID: "m-1", Epoch: 1, Demo: true, Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}}
	if _, err := b.Deploy(ctx, s); err != nil {
		t.Fatal(err)
	}
	pid := b.PID("web")
	s2 := s
	s2.Home, s2.MigrationID, s2.Epoch = "c9", "m-2", 2
	inst, err := b.Deploy(ctx, s2)
	if err != nil || inst.MigrationID != "m-2" || inst.Epoch != 2 || inst.Home != "c9" || b.PID("web") != pid {
		t.Fatalf("relabel: %+v, %v (pid %d, was %d)", inst, err, b.PID("web"), pid)
	}
	if got, _ := b.Get(ctx, "web"); got.Epoch != 2 || got.MigrationID != "m-2" {
		t.Fatalf("get after relabel: %+v", got)
	}
	s3 := s2
	s3.Ports = []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}
	if _, err := b.Deploy(ctx, s3); err == nil || !strings.Contains(err.Error(), "different spec") {
		t.Fatalf("a different workload under the name: %v", err)
	}
}

// TestReapUnrecordedCopy: the controller was killed after starting a copy
// but before recording it (no state file). The restarted backend cannot
// adopt it; it kills it, so the next copy of the service can bind its
// port (it would otherwise never be ready, and the leaked one would serve
// as a duplicate no record owns).
func TestReapUnrecordedCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b1, cfg, spec, pid := crashed(ctx, t)
	if err := os.Remove(b1.statePath("web")); err != nil {
		t.Fatal(err)
	}
	b2 := open(t, cfg)
	if b2.PID("web") != 0 {
		t.Fatal("adopted a copy with no state file")
	}
	// Gone (or a zombie its first supervisor's Wait has not reaped yet).
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil && !strings.Contains(string(st), ") Z ") {
		t.Fatalf("the unrecorded copy %d still runs: %s", pid, st)
	}
	inst, err := b2.Deploy(ctx, spec)
	if err != nil || !inst.Ready || b2.PID("web") == pid {
		t.Fatalf("a new copy on the freed port: %+v, %v", inst, err)
	}
}

// TestDemoExecutable: with DemoExecutable set (roam-demo, here the test
// binary under that name), the demo's copies run it with the demo's flags
// only, and it answers as the demo.
func TestDemoExecutable(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	demoExe := filepath.Join(t.TempDir(), demoBinary)
	if err := os.Symlink(exe, demoExe); err != nil {
		t.Fatal(err)
	}
	b := open(t, Config{DemoExecutable: demoExe})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := b.Deploy(ctx, backend.Spec{Name: "web", Home: "c0", Demo: true, Ports: []backend.Port{{Port: testport.Free(t), Protocol: lb.TCP}}})
	if err != nil {
		t.Fatal(err)
	}
	if body := get(t, "http://"+inst.Endpoints[0].String()+"/"); !strings.HasPrefix(body, "cluster c1 ") {
		t.Fatalf("demo answered %q", body)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", b.PID("web")))
	if err != nil {
		t.Fatal(err)
	}
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	if argv[0] != demoExe || argv[1] != "--cluster" {
		t.Fatalf("copy runs %q, want %s with the demo's flags", argv, demoExe)
	}
}
