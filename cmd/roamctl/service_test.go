package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roamnet/roam/ctrl"
)

// TestServiceCommand runs `roamctl service` against a server answering as
// the controller's API: flags after NAME, the token, the migrate body, and
// an API error surfacing with its reason.
func TestServiceCommand(t *testing.T) {
	var migrate ctrl.MigrateRequest
	var auth []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = append(auth, r.Header.Get("Authorization"))
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/services/web/migrate":
			_ = json.NewDecoder(r.Body).Decode(&migrate)
			_, _ = w.Write([]byte(`{"id":"m-1"}`))
		case r.URL.Path == "/v1/services/gone":
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"reason":"not-found","error":"service gone not found"}`))
		default:
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	defer srv.Close()
	// The token from a file (never a flag value), the server checked
	// against a CA file.
	dir := t.TempDir()
	tokFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokFile, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := runService(ctx, []string{"migrate", "web", "--to", "edge", "--ctrl", srv.URL, "--token-file", tokFile, "--ca", caFile}); err != nil {
		t.Fatal(err)
	}
	if migrate.Destination != "edge" || migrate.Reason != "manual" || migrate.Return != ctrl.ReturnCommitted {
		t.Fatalf("migrate body %+v: want an answer at the commit by default", migrate)
	}
	if err := runService(ctx, []string{"migrate", "web", "--return", "removed", "--ctrl", srv.URL, "--token-file", tokFile, "--ca", caFile}); err != nil {
		t.Fatal(err)
	}
	if migrate.Return != ctrl.ReturnRemoved {
		t.Fatalf("migrate body %+v: want an answer once the old copy is removed", migrate)
	}
	err := runService(ctx, []string{"get", "gone", "--ctrl", srv.URL, "--token-file", tokFile, "--ca", caFile})
	if err == nil || !strings.Contains(err.Error(), "404 not-found: service gone not found") {
		t.Fatalf("get gone: %v", err)
	}
	if err := runService(ctx, []string{"get", "--ctrl", srv.URL, "--ca", caFile}); err == nil || !strings.Contains(err.Error(), "want one NAME") {
		t.Fatalf("get without NAME: %v", err)
	}
	for _, a := range auth {
		if a != "Bearer tok" {
			t.Fatalf("authorization %q", a)
		}
	}
}
