package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRefusesOpenNATS: the embedded NATS is not started open: without TLS
// and an auth file roam-meta exits with a clear error; --insecure lets it
// run (the operator's explicit choice).
func TestRefusesOpenNATS(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "127.0.0.1:0", "--http-addr", ""},
		{"--listen", "127.0.0.1:0", "--http-addr", "", "--auth-file", "/nonexistent"},
	} {
		err := run(context.Background(), args)
		if err == nil {
			t.Fatalf("%v: started", args)
		}
		if !strings.Contains(err.Error(), "--tls-cert") && !strings.Contains(err.Error(), "auth file") {
			t.Fatalf("%v: %v, want the missing TLS or auth named", args, err)
		}
	}
	err := run(context.Background(), []string{"--listen", "127.0.0.1:0", "--http-addr", ""})
	if err == nil || !strings.Contains(err.Error(), "--tls-cert/--tls-key and --auth-file") || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("no TLS, no auth: %v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--listen", addr, "--http-addr", "", "--insecure"}) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("--insecure: exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("--insecure: NATS not listening after 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("--insecure: %v", err)
	}
}
