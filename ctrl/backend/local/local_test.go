package local

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/demo"
	"github.com/roamnet/roam/dataplane"
)

// TestMain lets the test binary double as the demo service the backend runs.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "demo" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := demo.Main(ctx, os.Args[2:]); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func newBackend(t *testing.T) *Backend {
	t.Helper()
	b, err := New(Config{ClusterID: "c1", ListenAddr: netip.MustParseAddr("127.0.0.1"), ExposeAddr: netip.MustParseAddr("127.0.0.1"),
		Pods: 4, MilliCPU: 1000, MemoryMB: 1024, MinBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
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

func TestDeployDemoRestartDelete(t *testing.T) {
	b := newBackend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := backend.Spec{Name: "web", Home: "c0", Demo: true,
		Ports: []backend.Port{{Port: freePort(t), Protocol: dataplane.TCP}}, Resources: backend.Resources{MilliCPU: 100, MemoryMB: 64}}
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
	pid := b.PID("web")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if np := b.PID("web"); np != 0 && np != pid {
			if i, err := b.Get(ctx, "web"); err == nil && i.Ready {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("copy not restarted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b.Restarts("web") < 1 {
		t.Fatal("restart not counted")
	}
	l, _ := b.List(ctx)
	if len(l) != 1 || l[0].Name != "web" {
		t.Fatalf("list %+v", l)
	}
	pid = b.PID("web")
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
	if _, err := b.Deploy(ctx, backend.Spec{Name: "Bad Name", Demo: true, Ports: []backend.Port{{Port: 1, Protocol: dataplane.TCP}}}); err == nil {
		t.Fatal("bad name accepted")
	}
	if _, err := b.Deploy(ctx, backend.Spec{Name: "big", Demo: true, Ports: []backend.Port{{Port: freePort(t), Protocol: dataplane.TCP}},
		Resources: backend.Resources{MilliCPU: 5000}}); err == nil || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("over capacity: %v", err)
	}
	// A command that never listens: Deploy gives up with ctx and leaves nothing.
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	if _, err := b.Deploy(sctx, backend.Spec{Name: "sleeper", Command: []string{"sleep", "60"},
		Ports: []backend.Port{{Port: freePort(t), Protocol: dataplane.TCP}}}); err == nil {
		t.Fatal("never-ready copy reported ready")
	}
	if l, _ := b.List(ctx); len(l) != 0 {
		t.Fatalf("left behind %+v", l)
	}
}
