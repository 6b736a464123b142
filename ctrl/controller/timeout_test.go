package controller

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend/backendtest"
)

// TestSlowBodyDropped: a client that sends a request's headers and then
// trickles its body (the slow-body attack that pinned a goroutine per
// connection) is cut off once ReadTimeout passes, while a client that
// sends a whole request is served.
func TestSlowBodyDropped(t *testing.T) {
	ctx := context.Background()
	const timeout = time.Second
	c, err := New(ctx, Config{ClusterID: "solo", APIAddr: "127.0.0.1:0", StorePath: filepath.Join(t.TempDir(), "c.db"),
		Backend: &backendtest.Memory{}, ReadTimeout: timeout,
		Users:  api.StaticUsers(api.User{Name: "ops", Role: api.RoleOperate, Hash: api.HashToken("tok")}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := strings.TrimPrefix(c.URL(), "http://")

	// A whole request is served.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("whole request: %q %v", line, err)
	}

	// A slow body: headers, one byte, then a byte every 300 ms (each read
	// makes progress, so only the request's overall deadline stops it).
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	start := time.Now()
	if _, err := io.WriteString(slow, "POST /v1/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.Copy(io.Discard, slow) // until the server closes
		closed <- time.Since(start)
	}()
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case took := <-closed:
			if took < timeout/2 || took > 5*timeout {
				t.Fatalf("slow body cut off after %s, want about %s", took, timeout)
			}
			t.Logf("slow body cut off after %s (ReadTimeout %s)", took.Round(time.Millisecond), timeout)
			return
		case <-tick.C:
			if _, err := io.WriteString(slow, " "); err != nil && time.Since(start) < timeout/2 {
				t.Fatalf("write refused early: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("a slow body held its connection for 15s")
		}
	}
}
