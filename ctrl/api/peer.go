package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/internal/httpjson"
	"github.com/roamnet/roam/meta"
)

const (
	headerForwarded = "X-Roam-Forwarded-By"
	// maxPeerAnswer bounds what is read of another controller's answer.
	maxPeerAnswer = 1 << 20
)

func validID(id string) error { return meta.ValidateClusterID(id) }

// Directory is where peer URLs and the addresses a cluster serves from
// come from: the MO's view of the hellos and the configured peers, never a
// message.
type Directory interface {
	ControllerURL(cluster string) (string, bool)
	// ClustersAt lists the clusters the directory has at a controller URL.
	ClustersAt(url string) []string
	// DataAddrs are the addresses cluster declares it exposes copies at
	// (false: it declares none, e.g. a configured peer without a hello).
	DataAddrs(cluster string) ([]netip.Addr, bool)
}

// EndpointPolicy says which endpoints a peer may point the load balancer at.
type EndpointPolicy struct {
	// AllowLoopback admits loopback and link-local addresses (the
	// in-process tests, where every cluster is an address of lo).
	AllowLoopback bool
}

// Check reports why ep may not be a copy of cluster's endpoint.
func (p EndpointPolicy) Check(dir Directory, cluster string, ep netip.AddrPort) error {
	a := ep.Addr()
	switch {
	case !ep.IsValid() || ep.Port() == 0:
		return fmt.Errorf("endpoint %s: invalid", ep)
	case a.Is4In6() || a.Zone() != "":
		return fmt.Errorf("endpoint %s: an IPv4-mapped or zoned address", ep)
	case a.IsUnspecified() || a.IsMulticast() || a == netip.IPv4Unspecified() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("endpoint %s: not a unicast address", ep)
	case !p.AllowLoopback && (a.IsLoopback() || a.IsLinkLocalUnicast()):
		return fmt.Errorf("endpoint %s: loopback or link-local", ep)
	}
	if dir == nil {
		return nil
	}
	if addrs, ok := dir.DataAddrs(cluster); ok && len(addrs) > 0 && !slices.Contains(addrs, a) {
		return fmt.Errorf("endpoint %s: not among the addresses %s declares (%v)", ep, cluster, addrs)
	}
	return nil
}

// PeerClient calls other controllers over mutual TLS as this cluster. It
// dials only URLs its directory lists, and accepts only a server whose
// certificate names a cluster the directory lists at that URL: a URL
// carried by a message reaches nobody. It implements ctrl.Peers.
type PeerClient struct {
	ClusterID string
	TLS       *pki.Source
	Dir       Directory
	Endpoints EndpointPolicy
	Timeout   time.Duration

	mu      sync.Mutex
	clients map[string]*http.Client
}

var _ ctrl.Peers = (*PeerClient)(nil)

// NewPeerClient returns a client calling as the identity in tls.
func NewPeerClient(cluster string, tls *pki.Source, dir Directory) *PeerClient {
	return &PeerClient{ClusterID: cluster, TLS: tls, Dir: dir, Timeout: 2 * time.Minute}
}

// PeerError is an error answer from another controller. Its message is
// not repeated to our own callers: only the status and the reason code.
type PeerError struct {
	URL    string
	Status int
	Reason string
	// Msg is the upstream's message, for the logs only.
	Msg string
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.URL, e.Status, e.Reason)
}

// ErrNotInDirectory is a peer URL no directory entry has.
var ErrNotInDirectory = errors.New("peer URL is not in the directory")

func trimURL(u string) string { return strings.TrimRight(u, "/") }

// client is the HTTP client for base, accepting only a server whose
// identity is one of clusters.
func (c *PeerClient) client(base string, clusters []string) *http.Client {
	key := base + "|" + strings.Join(clusters, ",")
	c.mu.Lock()
	defer c.mu.Unlock()
	if hc, ok := c.clients[key]; ok {
		return hc
	}
	cs := slices.Clone(clusters)
	tc := c.TLS.ClientConfig(func(id pki.ID) error {
		if id.IsNode() || !slices.Contains(cs, id.Cluster) {
			return fmt.Errorf("the directory lists %v at this URL", cs)
		}
		return nil
	})
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4,
		IdleConnTimeout: time.Minute, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: c.Timeout}
	hc := &http.Client{Transport: tr, Timeout: c.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if c.clients == nil {
		c.clients = map[string]*http.Client{}
	}
	c.clients[key] = hc
	return hc
}

// resolve checks base against the directory and returns the clusters
// there.
func (c *PeerClient) resolve(base string) ([]string, error) {
	if base == "" {
		return nil, errors.New("call peer: no controller URL")
	}
	if c.TLS == nil {
		return nil, errors.New("call peer: this controller has no identity (--tls-dir): peer calls are disabled")
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("call peer %q: want an https:// URL", base)
	}
	var clusters []string
	if c.Dir != nil {
		clusters = c.Dir.ClustersAt(trimURL(base))
	}
	if len(clusters) == 0 {
		return nil, fmt.Errorf("call peer %s: %w", base, ErrNotInDirectory)
	}
	return clusters, nil
}

func (c *PeerClient) do(ctx context.Context, method, base, path string, in, out any) error {
	clusters, err := c.resolve(base)
	if err != nil {
		return err
	}
	u := trimURL(base) + path
	req, err := httpjson.NewRequest(ctx, method, u, in)
	if err != nil {
		return fmt.Errorf("call peer %s: %w", u, err)
	}
	req.Header.Set(headerForwarded, c.ClusterID)
	ans, err := httpjson.Do(c.client(trimURL(base), clusters), req, maxPeerAnswer)
	if err != nil {
		return fmt.Errorf("call peer %s %s: %w", method, u, err)
	}
	if !ans.OK() {
		e, _ := ans.ErrorBody()
		if !knownReason(e.Reason) {
			e.Reason = "error"
		}
		msg := e.Msg
		if len(msg) > 512 {
			msg = msg[:512]
		}
		return &PeerError{URL: method + " " + u, Status: ans.Status, Reason: e.Reason, Msg: msg}
	}
	if out != nil && len(ans.Body) > 0 {
		if err := json.Unmarshal(ans.Body, out); err != nil {
			return fmt.Errorf("decode peer answer %s: %w", u, err)
		}
	}
	return nil
}

// DeployForeign asks the controller at base to run a copy. The answer's
// endpoints must be the cluster's own (see EndpointPolicy).
func (c *PeerClient) DeployForeign(ctx context.Context, base string, req ctrl.ForeignRequest) (ctrl.ForeignReply, error) {
	var rep ctrl.ForeignReply
	if err := c.do(ctx, http.MethodPost, base, "/v1/peer/foreign", req, &rep); err != nil {
		return rep, err
	}
	clusters, _ := c.resolve(base)
	if !slices.Contains(clusters, rep.Cluster) {
		return ctrl.ForeignReply{}, fmt.Errorf("deploy at %s: the answer names cluster %q, not the one called (%v)", base, rep.Cluster, clusters)
	}
	for _, ep := range rep.Endpoints {
		if err := c.Endpoints.Check(c.Dir, rep.Cluster, ep); err != nil {
			return ctrl.ForeignReply{}, fmt.Errorf("deploy at %s: refused answer: %w", rep.Cluster, err)
		}
	}
	return rep, nil
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

// Drained tells the cluster at base, from the home of name, that its load
// balancer has no live flow left to that cluster's copy of epoch epoch.
func (c *PeerClient) Drained(ctx context.Context, base, name string, epoch ctrl.Epoch) error {
	return c.do(ctx, http.MethodPost, base, "/v1/peer/foreign/"+url.PathEscape(name)+"/drained?"+epochQuery(epoch), nil, nil)
}

// SRv6Gone tells the home at base that this cluster's SRv6 copy of name
// of epoch epoch is gone.
func (c *PeerClient) SRv6Gone(ctx context.Context, base, name string, epoch ctrl.Epoch) error {
	return c.do(ctx, http.MethodPost, base, "/v1/peer/srv6-gone/"+url.PathEscape(name)+"?"+epochQuery(epoch), nil, nil)
}

// epochQuery is the query naming epoch in the peer calls that require one
// (read back by requiredEpoch).
func epochQuery(epoch ctrl.Epoch) string {
	return url.Values{"migration_id": {epoch.MigrationID}, "epoch": {strconv.FormatUint(epoch.N, 10)}}.Encode()
}

// Where asks a home cluster where its service runs.
func (c *PeerClient) Where(ctx context.Context, base, name string) (ctrl.Where, error) {
	var w ctrl.Where
	err := c.do(ctx, http.MethodGet, base, "/v1/peer/where/"+url.PathEscape(name), nil, &w)
	return w, err
}

// hosts asks home whether its service name runs at cluster (a yes or no:
// a cluster the service does not concern learns nothing else).
func (c *PeerClient) hosts(ctx context.Context, home, name, cluster string) (bool, error) {
	base, ok := c.Dir.ControllerURL(home)
	if !ok {
		return false, fmt.Errorf("ask %s: %w", home, ErrNotInDirectory)
	}
	var w ctrl.Where
	if err := c.do(ctx, http.MethodGet, base, "/v1/peer/where/"+url.PathEscape(name)+"?"+url.Values{"host": {cluster}}.Encode(), nil, &w); err != nil {
		return false, err
	}
	return w.Home == home && w.Known && w.Cluster == cluster, nil
}

// Health probes a controller; the answer says which cluster and which
// incarnation of its store answered.
func (c *PeerClient) Health(ctx context.Context, base string) (ctrl.Health, error) {
	var h ctrl.Health
	err := c.do(ctx, http.MethodGet, base, "/v1/peer/health", nil, &h)
	return h, err
}

// Migrate forwards a user's migrate call to the cluster running the
// service (a peer route: a peer's identity never opens a user route).
func (c *PeerClient) Migrate(ctx context.Context, base, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	var m ctrl.Migration
	err := c.do(ctx, http.MethodPost, base, "/v1/peer/services/"+url.PathEscape(name)+"/migrate", req, &m)
	return m, err
}

// get forwards a user's GET to the cluster running the service.
func (c *PeerClient) get(ctx context.Context, base, name string) (ctrl.Record, error) {
	var r ctrl.Record
	err := c.do(ctx, http.MethodGet, base, "/v1/peer/services/"+url.PathEscape(name), nil, &r)
	return r, err
}
