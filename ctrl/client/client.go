// Package client is the Go client of a controller's user REST API
// (/v1/services, /v1/migrations): what roamctl and the testbed use. The
// caller brings the *http.Client, so it decides the transport (TLS, a
// dialer inside a network namespace) and the timeout.
package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/internal/httpjson"
)

// maxBody bounds what is read of an answer.
const maxBody = 4 << 20

// Client calls one controller.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// New returns a client for the controller at base (http://host:port) that
// authenticates with token (none if empty). A nil hc is
// http.DefaultClient.
func New(base, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token, hc: hc}
}

// URL is the controller's base URL.
func (c *Client) URL() string { return c.base }

// HTTPError is an answer outside 2xx: the status, and the controller's
// reason and message when it sent its JSON error.
type HTTPError struct {
	Method, URL string
	Status      int
	Reason      string // the API's machine-readable reason, if any
	Message     string // the API's message, or the start of the body
}

func (e *HTTPError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Status, e.Reason, e.Message)
	}
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.URL, e.Status, e.Message)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	req, err := httpjson.NewRequest(ctx, method, c.base+path, in)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	ans, err := httpjson.Do(c.hc, req, maxBody)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if !ans.OK() {
		he := &HTTPError{Method: method, URL: c.base + path, Status: ans.Status}
		if e, ok := ans.ErrorBody(); ok {
			he.Reason, he.Message = e.Reason, e.Msg
		} else {
			he.Message = strings.TrimSpace(string(ans.Body[:min(len(ans.Body), 300)]))
		}
		return he
	}
	if out != nil && len(ans.Body) > 0 {
		if err := json.Unmarshal(ans.Body, out); err != nil {
			return fmt.Errorf("decode %s %s: %w (body %.200s)", method, path, err, ans.Body)
		}
	}
	return nil
}

func servicePath(name string) string { return "/v1/services/" + url.PathEscape(name) }

// Deploy posts a service descriptor.
func (c *Client) Deploy(ctx context.Context, d ctrl.Descriptor) (ctrl.Record, error) {
	var r ctrl.Record
	return r, c.do(ctx, http.MethodPost, "/v1/services", d, &r)
}

// Get reads one service's record.
func (c *Client) Get(ctx context.Context, name string) (ctrl.Record, error) {
	var r ctrl.Record
	return r, c.do(ctx, http.MethodGet, servicePath(name), nil, &r)
}

// List reads every service's record.
func (c *Client) List(ctx context.Context) ([]ctrl.Record, error) {
	var rs []ctrl.Record
	return rs, c.do(ctx, http.MethodGet, "/v1/services", nil, &rs)
}

// Delete removes a service.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, servicePath(name), nil, nil)
}

// Migrate moves a service and returns the migration with its stage
// timings once it has settled. An empty destination asks the MO.
func (c *Client) Migrate(ctx context.Context, name, destination, reason string) (ctrl.Migration, error) {
	return c.MigrateWith(ctx, name, ctrl.MigrateRequest{Destination: destination, Reason: reason})
}

// MigrateWith is Migrate with the whole request (e.g. Return:
// ctrl.ReturnCommitted, for an answer at the commit).
func (c *Client) MigrateWith(ctx context.Context, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	var m ctrl.Migration
	return m, c.do(ctx, http.MethodPost, servicePath(name)+"/migrate", req, &m)
}

// Migrations lists the migrations this controller has journalled.
func (c *Client) Migrations(ctx context.Context) ([]ctrl.Migration, error) {
	var ms []ctrl.Migration
	return ms, c.do(ctx, http.MethodGet, "/v1/migrations", nil, &ms)
}
