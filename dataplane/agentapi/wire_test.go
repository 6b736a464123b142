package agentapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/test/netns"
)

// fakeAgent answers each call on a raw TCP connection with what answer
// writes for its path (in one write), and returns a client of it.
func fakeAgent(t *testing.T, answer func(path string) string) *Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	netns.Serve(ln, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, answer(req.URL.Path)); err != nil {
				return
			}
		}
	})
	c := New("http://"+ln.Addr().String(), "")
	c.HTTP.Timeout = 5 * time.Second
	t.Cleanup(c.HTTP.CloseIdleConnections)
	return c
}

func okAnswer(path string) string {
	body := fmt.Sprintf(`{"path":%q}`, path)
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// callPath makes a GET of path through both of the client's ways (its
// own call, and the http.Client on its transport) and returns the paths
// the answers name.
func callPath(t *testing.T, c *Client, path string) (own, viaHTTP string, err error) {
	t.Helper()
	var out struct{ Path string }
	if err := c.do(context.Background(), http.MethodGet, path, nil, &out); err != nil {
		return "", "", err
	}
	own = out.Path
	resp, err := c.HTTP.Get(c.base + path)
	if err != nil {
		return own, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return own, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return own, "", fmt.Errorf("status %s: %s", resp.Status, b)
	}
	return own, strings.TrimSuffix(strings.TrimPrefix(string(b), `{"path":"`), `"}`), nil
}

// TestInformationalAnswers: a "100 Continue" before the answer is
// skipped (the call gets its answer, and the next call its own); a 101
// or more than max1xx 1xx answers are errors.
func TestInformationalAnswers(t *testing.T) {
	c := fakeAgent(t, func(path string) string {
		switch {
		case strings.HasPrefix(path, "/switch"):
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
		case strings.HasPrefix(path, "/many"):
			return strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", max1xx+1) + okAnswer(path)
		}
		return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + okAnswer(path)
	})
	for i := range 3 {
		p := fmt.Sprintf("/call%d", i)
		own, viaHTTP, err := callPath(t, c, p)
		if err != nil || own != p || viaHTTP != p {
			t.Fatalf("call %s: answers name %q and %q, %v", p, own, viaHTTP, err)
		}
	}
	for _, p := range []string{"/switch", "/many"} {
		if err := c.do(context.Background(), http.MethodGet, p, nil, nil); err == nil {
			t.Fatalf("%s: no error", p)
		}
		if resp, err := c.HTTP.Get(c.base + p); err == nil {
			_ = resp.Body.Close()
			t.Fatalf("%s through the http.Client: %s, want an error", p, resp.Status)
		}
	}
	if own, viaHTTP, err := callPath(t, c, "/after"); err != nil || own != "/after" || viaHTTP != "/after" {
		t.Fatalf("call after the errors: %q %q %v", own, viaHTTP, err)
	}
}

// TestSecondAnswerNotKept: an agent that sends two answers to one call:
// the connection is not kept (the next call would read the second as its
// own); the next call gets its own answer on a new connection.
func TestSecondAnswerNotKept(t *testing.T) {
	c := fakeAgent(t, func(path string) string { return okAnswer(path) + okAnswer("/extra") })
	for i := range 3 {
		p := fmt.Sprintf("/call%d", i)
		own, viaHTTP, err := callPath(t, c, p)
		if err != nil || own != p || viaHTTP != p {
			t.Fatalf("call %s: answers name %q and %q, %v", p, own, viaHTTP, err)
		}
	}
	if n := c.sync.idleConns(); n != 0 {
		t.Fatalf("%d connections kept with a second answer unread", n)
	}
}

// TestAnswerHeadBounded: an answer's head longer than maxAnswerHead is
// an error, not read on for ever.
func TestAnswerHeadBounded(t *testing.T) {
	long := "HTTP/1.1 200 OK\r\nX-Long: " + strings.Repeat("a", 2*maxAnswerHead) + "\r\nContent-Length: 0\r\n\r\n"
	c := fakeAgent(t, func(string) string { return long })
	err := c.do(context.Background(), http.MethodGet, "/long", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "head longer") {
		t.Fatalf("a head of %d bytes: %v, want refused", len(long), err)
	}
	if resp, err := c.HTTP.Get(c.base + "/long"); err == nil || !strings.Contains(err.Error(), "head longer") {
		if err == nil {
			_ = resp.Body.Close()
		}
		t.Fatalf("a head of %d bytes through the http.Client: %v, want refused", len(long), err)
	}
}

// TestStalledHandshakeTimesOut: an agent that accepts the TCP connection
// and never answers the TLS handshake: a call whose context has no
// deadline ends after the client's timeout, and so does Warm.
func TestStalledHandshakeTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	netns.BlackHole(t, ln)
	c := NewTLS("https://"+ln.Addr().String(), &tls.Config{ServerName: "agent", MinVersion: tls.VersionTLS13})
	c.HTTP.Timeout = 200 * time.Millisecond
	for name, call := range map[string]func(context.Context) error{"health": c.Health, "warm": c.Warm} {
		done := make(chan error, 1)
		t0 := time.Now()
		go func() { done <- call(context.Background()) }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("%s: no error from an agent that never answered", name)
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Fatalf("%s: ended after %s", name, d)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: still waiting for a handshake 5s after a 200ms timeout", name)
		}
	}
}
