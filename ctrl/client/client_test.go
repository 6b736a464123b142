package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/roamnet/roam/ctrl"
)

// TestCalls checks each call's method, path, token and body against a
// server that answers as the controller's API does, and that a JSON error
// comes back as an *HTTPError with the API's reason.
func TestCalls(t *testing.T) {
	type seen struct{ method, path, auth, ctype, body string }
	var got []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		_ = json.NewDecoder(r.Body).Decode(&body)
		got = append(got, seen{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), string(body)})
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/services/missing":
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"reason":"not-found","error":"service missing not found"}`))
		case r.Method == http.MethodGet && r.URL.Path == "/v1/services/broken":
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("upstream says no"))
		case r.Method == http.MethodGet && r.URL.Path == "/v1/services":
			_, _ = w.Write([]byte(`[{"home":"a","cluster":"b"}]`))
		case r.Method == http.MethodGet && r.URL.Path == "/v1/migrations":
			_, _ = w.Write([]byte(`[{"id":"m-1"}]`))
		case r.Method == http.MethodPost && r.URL.Path == "/v1/services/web/migrate":
			_, _ = w.Write([]byte(`{"id":"m-2","to":"edge"}`))
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = w.Write([]byte(`{"home":"a"}`))
		}
	}))
	defer srv.Close()
	c := New(srv.URL+"/", "tok", srv.Client())
	ctx := context.Background()

	if r, err := c.Deploy(ctx, ctrl.Descriptor{Name: "web", Demo: true}); err != nil || r.Home != "a" {
		t.Fatalf("deploy: %+v, %v", r, err)
	}
	if rs, err := c.List(ctx); err != nil || len(rs) != 1 || rs[0].Cluster != "b" {
		t.Fatalf("list: %+v, %v", rs, err)
	}
	if m, err := c.Migrate(ctx, "web", "edge", "manual"); err != nil || m.ID != "m-2" {
		t.Fatalf("migrate: %+v, %v", m, err)
	}
	if ms, err := c.Migrations(ctx); err != nil || len(ms) != 1 || ms[0].ID != "m-1" {
		t.Fatalf("migrations: %+v, %v", ms, err)
	}
	if err := c.Delete(ctx, "a b"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err := c.Get(ctx, "missing")
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 404 || he.Reason != "not-found" || he.Message != "service missing not found" {
		t.Fatalf("get missing: %#v", err)
	}
	_, err = c.Get(ctx, "broken")
	if !errors.As(err, &he) || he.Status != 502 || he.Reason != "" || he.Message != "upstream says no" {
		t.Fatalf("get broken: %#v", err)
	}

	want := []seen{
		{"POST", "/v1/services", "Bearer tok", "application/json", `{"name":"web","demo":true,"ports":null,"resources":{},"constraints":{}}`},
		{"GET", "/v1/services", "Bearer tok", "", ""},
		{"POST", "/v1/services/web/migrate", "Bearer tok", "application/json", `{"destination":"edge","reason":"manual"}`},
		{"GET", "/v1/migrations", "Bearer tok", "", ""},
		{"DELETE", "/v1/services/a%20b", "Bearer tok", "", ""},
		{"GET", "/v1/services/missing", "Bearer tok", "", ""},
		{"GET", "/v1/services/broken", "Bearer tok", "", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("calls %+v", got)
	}
	for i := range want {
		if got[i].method != want[i].method || got[i].path != want[i].path || got[i].auth != want[i].auth || got[i].ctype != want[i].ctype {
			t.Errorf("call %d: %+v, want %+v", i, got[i], want[i])
		}
		if want[i].body != "" {
			var a, b any
			_ = json.Unmarshal([]byte(got[i].body), &a)
			_ = json.Unmarshal([]byte(want[i].body), &b)
			ab, _ := json.Marshal(a)
			bb, _ := json.Marshal(b)
			if string(ab) != string(bb) {
				t.Errorf("call %d body %s, want %s", i, got[i].body, want[i].body)
			}
		}
	}
}
