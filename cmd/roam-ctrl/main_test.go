package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	roamapi "github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/test/testport"
)

// TestBinary builds roam-ctrl, runs it with the contract's flags (no MO, no
// agents), deploys the demo service through the REST API and checks the
// copy (run as `roam-ctrl demo`) answers, then stops it with SIGTERM.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "roam-ctrl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	api := fmt.Sprintf("127.0.0.1:%d", int(testport.Free(t)))
	// Its identity and its users, from files: no secret in argv.
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := ca.WriteIdentity(tlsDir, pki.ID{Cluster: "solo"}, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users")
	if err := os.WriteFile(users, []byte(roamapi.UserLine("ops", roamapi.RoleOperate, "tok")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	// Without an identity it refuses to start, and -h shows no secret
	// even when the environment holds one.
	if out, err := exec.Command(bin, "--cluster-id", "solo").CombinedOutput(); err == nil || !strings.Contains(string(out), "--tls-dir is required") {
		t.Fatalf("started without --tls-dir: %v %s", err, out)
	}
	hcmd := exec.Command(bin, "-h")
	hcmd.Env = append(os.Environ(), "ROAM_TOKEN=SECRET-IN-ENV", "ROAM_PEER_SECRET=SECRET-IN-ENV")
	if out, _ := hcmd.CombinedOutput(); strings.Contains(string(out), "SECRET-IN-ENV") || !strings.Contains(string(out), "-users-file") {
		t.Fatalf("-h:\n%s", out)
	}
	var logs syncBuffer
	start := func() (*exec.Cmd, chan error) {
		cmd := exec.Command(bin, "--cluster-id", "solo", "--api-addr", api, "--frontend-addr", "127.0.0.1", "--data-addr", "127.0.0.1",
			"--listen-addr", "127.0.0.1", "--store", filepath.Join(dir, "ctrl.db"), "--tls-dir", tlsDir, "--users-file", users,
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
		})
		return cmd, done
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("roam-ctrl output:\n%s", logs.String())
		}
	})
	cmd, done := start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	call := func(method, path, body string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, method, "https://"+api+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitHealthy := func() {
		for {
			if code, _ := call("GET", "/healthz", ""); code == 200 {
				return
			}
			if ctx.Err() != nil {
				t.Fatal("roam-ctrl never became healthy")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitHealthy()
	port := int(testport.Free(t))
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
	// kill -9: the copy keeps serving; a new controller on the same store
	// adopts it.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	done <- nil
	demoGet := func() string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := demoGet(); !strings.HasPrefix(got, "cluster solo ") {
		t.Fatalf("copy after the controller's kill -9: %q", got)
	}
	cmd, done = start()
	waitHealthy()
	if code, body := call("GET", "/v1/services/web", ""); code != 200 || !strings.Contains(body, `"kind":"local"`) {
		t.Fatalf("get after restart: %d %s", code, body)
	}
	if !strings.Contains(logs.String(), "adopted running copy") {
		t.Fatal("the restarted controller did not adopt the copy")
	}
	if got := demoGet(); !strings.HasPrefix(got, "cluster solo ") {
		t.Fatalf("copy after restart: %q", got)
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

// syncBuffer is a bytes.Buffer safe for the process's writes and our reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
