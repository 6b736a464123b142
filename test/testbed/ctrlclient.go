package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/roamnet/roam/ctrl"
)

// CtrlClient talks to one controller's REST API from inside a namespace.
type CtrlClient struct {
	Base  string
	Token string
	hc    *http.Client
}

// Ctrl returns a client for cluster's controller, dialling from its node
// namespace.
func (tb *Testbed) Ctrl(cluster string) (*CtrlClient, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return nil, err
	}
	return &CtrlClient{Base: c.CtrlURL(), Token: tb.State().Secrets.UserToken, hc: HTTPClient(c.NS, 60*time.Second)}, nil
}

func (c *CtrlClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return &HTTPError{Method: method, URL: c.Base + path, Status: resp.StatusCode, Body: string(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s: %w (body %.200s)", method, path, err, b)
		}
	}
	return nil
}

// HTTPError is a non-2xx answer.
type HTTPError struct {
	Method, URL string
	Status      int
	Body        string
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %.300s", e.Method, e.URL, e.Status, e.Body)
}

// Deploy posts a service descriptor (POST /v1/services).
func (c *CtrlClient) Deploy(ctx context.Context, d ctrl.Descriptor) (ctrl.Record, error) {
	var r ctrl.Record
	return r, c.do(ctx, http.MethodPost, "/v1/services", d, &r)
}

// Get reads one service record.
func (c *CtrlClient) Get(ctx context.Context, name string) (ctrl.Record, error) {
	var r ctrl.Record
	return r, c.do(ctx, http.MethodGet, "/v1/services/"+url.PathEscape(name), nil, &r)
}

// List reads every service record.
func (c *CtrlClient) List(ctx context.Context) ([]ctrl.Record, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/services", nil, &raw); err != nil {
		return nil, err
	}
	var rs []ctrl.Record
	if err := json.Unmarshal(raw, &rs); err == nil {
		return rs, nil
	}
	var wrapped struct {
		Services []ctrl.Record `json:"services"`
	}
	if err := json.Unmarshal(raw, &wrapped); err != nil {
		return nil, fmt.Errorf("decode service list: %w", err)
	}
	return wrapped.Services, nil
}

// Delete removes a service.
func (c *CtrlClient) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/services/"+url.PathEscape(name), nil, nil)
}

// Migrate moves a service (synchronous) and returns the migration with its
// stage timings.
func (c *CtrlClient) Migrate(ctx context.Context, name, destination, reason string) (ctrl.Migration, error) {
	var m ctrl.Migration
	in := map[string]string{"reason": reason}
	if destination != "" {
		in["destination"] = destination
	}
	return m, c.do(ctx, http.MethodPost, "/v1/services/"+url.PathEscape(name)+"/migrate", in, &m)
}

// Migrations lists the migrations this controller has seen.
func (c *CtrlClient) Migrations(ctx context.Context) ([]ctrl.Migration, error) {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/migrations", nil, &raw); err != nil {
		return nil, err
	}
	var ms []ctrl.Migration
	if err := json.Unmarshal(raw, &ms); err == nil {
		return ms, nil
	}
	var wrapped struct {
		Migrations []ctrl.Migration `json:"migrations"`
	}
	if err := json.Unmarshal(raw, &wrapped); err != nil {
		return nil, fmt.Errorf("decode migration list: %w", err)
	}
	return wrapped.Migrations, nil
}
