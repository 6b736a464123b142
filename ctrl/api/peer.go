package api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/meta"
)

const (
	peerTokenPrefix = "roam1."
	headerForwarded = "X-Roam-Forwarded-By"
	// peerTokenTTL is how long a signed token is valid; VerifyPeerToken
	// refuses tokens that claim to live longer (clock skew allowance).
	peerTokenTTL = time.Minute
	maxTokenTTL  = 5 * time.Minute
)

func validID(id string) error { return meta.ValidateClusterID(id) }

func constantEq(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func sign(secret, cluster string, exp int64) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "%s|%d", cluster, exp)
	return hex.EncodeToString(m.Sum(nil))
}

// PeerToken signs a controller token for cluster valid until exp:
// "roam1.<cluster>.<unix expiry>.<hex HMAC-SHA256(secret, cluster|expiry)>".
func PeerToken(secret, cluster string, exp time.Time) string {
	e := exp.Unix()
	return peerTokenPrefix + cluster + "." + strconv.FormatInt(e, 10) + "." + sign(secret, cluster, e)
}

// VerifyPeerToken checks a controller token and returns the cluster it names.
func VerifyPeerToken(secret, tok string, now time.Time) (string, error) {
	parts := strings.Split(strings.TrimPrefix(tok, peerTokenPrefix), ".")
	if len(parts) != 3 {
		return "", errors.New("malformed")
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return "", errors.New("malformed expiry")
	}
	if !hmac.Equal([]byte(sign(secret, parts[0], exp)), []byte(parts[2])) {
		return "", errors.New("bad signature")
	}
	t := time.Unix(exp, 0)
	if now.After(t) {
		return "", fmt.Errorf("expired at %s", t.UTC().Format(time.RFC3339))
	}
	if t.Sub(now) > maxTokenTTL {
		return "", errors.New("expiry too far ahead")
	}
	return parts[0], nil
}

// PeerClient calls other controllers with signed tokens. It implements
// ctrl.Peers.
type PeerClient struct {
	ClusterID string
	Secret    string
	HTTP      *http.Client
}

var _ ctrl.Peers = (*PeerClient)(nil)

// NewPeerClient returns a client signing as cluster.
func NewPeerClient(cluster, secret string) *PeerClient {
	return &PeerClient{ClusterID: cluster, Secret: secret, HTTP: &http.Client{Timeout: 2 * time.Minute}}
}

// PeerError is an error answer from another controller.
type PeerError struct {
	URL    string
	Status int
	Reason string
	Msg    string
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.URL, e.Status, e.Msg)
}

func (c *PeerClient) do(ctx context.Context, method, base, path string, in, out any) error {
	if base == "" {
		return errors.New("call peer: no controller URL")
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := strings.TrimRight(base, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("call peer %s: %w", u, err)
	}
	req.Header.Set("Authorization", "Bearer "+PeerToken(c.Secret, c.ClusterID, time.Now().Add(peerTokenTTL)))
	req.Header.Set(headerForwarded, c.ClusterID)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("call peer %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("read peer answer %s: %w", u, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		_ = json.Unmarshal(b, &e)
		if e.Msg == "" {
			e.Msg = strings.TrimSpace(string(b))
		}
		return &PeerError{URL: method + " " + u, Status: resp.StatusCode, Reason: e.Reason, Msg: e.Msg}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode peer answer %s: %w", u, err)
		}
	}
	return nil
}

// DeployForeign asks the controller at base to run a copy.
func (c *PeerClient) DeployForeign(ctx context.Context, base string, req ctrl.ForeignRequest) (ctrl.ForeignReply, error) {
	var rep ctrl.ForeignReply
	err := c.do(ctx, http.MethodPost, base, "/v1/peer/foreign", req, &rep)
	return rep, err
}

// RemoveForeign asks it to drop a foreign copy, if its epoch is epoch.
func (c *PeerClient) RemoveForeign(ctx context.Context, base, name, home string, epoch ctrl.Epoch) error {
	q := url.Values{"home": {home}}
	if epoch.MigrationID != "" {
		q.Set("migration_id", epoch.MigrationID)
	}
	if epoch.N != 0 {
		q.Set("epoch", strconv.FormatUint(epoch.N, 10))
	}
	return c.do(ctx, http.MethodDelete, base, "/v1/peer/foreign/"+url.PathEscape(name)+"?"+q.Encode(), nil, nil)
}

// MovedOn tells a home cluster its service moved on.
func (c *PeerClient) MovedOn(ctx context.Context, base string, n ctrl.MovedOn) (ctrl.Migration, error) {
	var m ctrl.Migration
	err := c.do(ctx, http.MethodPost, base, "/v1/peer/moved-on", n, &m)
	return m, err
}

// Where asks a home cluster where its service runs.
func (c *PeerClient) Where(ctx context.Context, base, name string) (ctrl.Where, error) {
	var w ctrl.Where
	err := c.do(ctx, http.MethodGet, base, "/v1/peer/where/"+url.PathEscape(name), nil, &w)
	return w, err
}

// Health probes a controller; the answer says which cluster and which
// incarnation of its store answered.
func (c *PeerClient) Health(ctx context.Context, base string) (ctrl.Health, error) {
	var h ctrl.Health
	err := c.do(ctx, http.MethodGet, base, "/v1/peer/health", nil, &h)
	return h, err
}

// Migrate forwards a migrate call.
func (c *PeerClient) Migrate(ctx context.Context, base, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	var m ctrl.Migration
	err := c.do(ctx, http.MethodPost, base, "/v1/services/"+url.PathEscape(name)+"/migrate", req, &m)
	return m, err
}
