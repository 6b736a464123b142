package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestBinary builds roam-ctrl, runs it with the contract's flags (no MO, no
// agents), deploys the demo service through the REST API and checks the
// copy (run as `roam-ctrl demo`) answers, then stops it with SIGTERM.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "roam-ctrl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	api := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--cluster-id", "solo", "--api-addr", api, "--frontend-addr", "127.0.0.1", "--data-addr", "127.0.0.1",
		"--listen-addr", "127.0.0.1", "--store", filepath.Join(dir, "ctrl.db"), "--token", "tok", "--peer-secret", "s",
		"--hello-interval", "200ms", "--failsafe-after", "2s", "--drain-timeout", "1s")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("roam-ctrl output:\n%s", logs.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	call := func(method, path, body string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, method, "http://"+api+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for {
		if code, _ := call("GET", "/healthz", ""); code == 200 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("roam-ctrl never became healthy")
		}
		time.Sleep(50 * time.Millisecond)
	}
	port := freePort(t)
	code, body := call("POST", "/v1/services", fmt.Sprintf(`{"name":"web","demo":true,"ports":[{"port":%d,"protocol":"tcp"}]}`, port))
	if code != 201 {
		t.Fatalf("deploy: %d %s", code, body)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), "cluster solo ") {
		t.Fatalf("demo answered %q", b)
	}
	if code, body := call("GET", "/v1/services", ""); code != 200 || !strings.Contains(body, `"kind":"local"`) {
		t.Fatalf("list: %d %s", code, body)
	}
	if code, _ := call("GET", "/v1/services", ""); code != 200 {
		t.Fatal("list failed")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("roam-ctrl exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("roam-ctrl did not stop on SIGTERM")
	}
	// The copy went with the controller.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Fatal("the demo copy outlived the controller")
	}
	_ = os.Remove(bin)
}
