// Package meta is roam's meta-orchestrator (MO): a registry of clusters fed
// by periodic hellos, liveness, a placement policy answering placement
// requests over NATS, and the client controllers use to talk to it.
//
// This file holds the wire messages (versioned JSON) that controllers
// import: Hello, PlacementRequest and PlacementReply, their validation and
// decoders. Keep them stable: add fields, never rename or retype one.
package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"regexp"
	"time"

	"github.com/nats-io/nuid"

	"github.com/roamnet/roam/dataplane/lb"
)

// Version is the message format version this package writes and accepts.
const Version = 1

// MaxMessageSize bounds every decoded message.
const MaxMessageSize = 256 << 10

// Subjects (see README.md for permissions).
const (
	// SubjectHelloPrefix + cluster id is where a cluster publishes its hellos.
	SubjectHelloPrefix = "roam.hello."
	// SubjectHelloAll matches every cluster's hellos.
	SubjectHelloAll = "roam.hello.*"
	// SubjectPlace is the placement request/reply endpoint (queue group).
	SubjectPlace = "roam.place"
	// ServiceName is the nats.go micro service name of the MO.
	ServiceName = "roam-meta"
	// QueueGroup is the queue group MO replicas share.
	QueueGroup = "roam-meta"
)

// HelloSubject is the subject cluster id publishes its hellos on.
func HelloSubject(id string) string { return SubjectHelloPrefix + id }

// Tiers of the paper's use case; any other non-empty label is accepted.
const (
	TierDeepEdge = "deep-edge"
	TierEdge     = "edge"
	TierCloud    = "cloud"
)

// Reason is why a service must be placed elsewhere.
type Reason string

// Reasons a placement is requested for.
const (
	ReasonLackOfResources Reason = "lack-of-resources"
	ReasonNetworkChange   Reason = "network-change"
	ReasonFailover        Reason = "failover"
	ReasonManual          Reason = "manual"
	// ReasonBetterPlacement: a place better than where the service runs
	// has stayed better for the trigger's hold time.
	ReasonBetterPlacement Reason = "better-placement"
)

// Validate reports whether r is one of the known reasons.
func (r Reason) Validate() error {
	switch r {
	case ReasonLackOfResources, ReasonNetworkChange, ReasonBetterPlacement, ReasonFailover, ReasonManual:
		return nil
	}
	return fmt.Errorf("reason %q: want lack-of-resources, network-change, better-placement, failover or manual", string(r))
}

// LinkFrom says from which cluster link constraints are measured.
type LinkFrom string

// Link constraint origins; empty means the requester.
const (
	LinkFromRequester LinkFrom = "requester"
	LinkFromHome      LinkFrom = "home"
)

// Error codes carried in error replies (micro service error headers
// Nats-Service-Error-Code / Nats-Service-Error).
const (
	CodeBadRequest  = "400" // malformed or invalid message
	CodeForbidden   = "403" // requester does not match the credentials
	CodeUnavailable = "503" // MO not ready
	CodeInternal    = "500"
)

var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// ValidateClusterID reports why id cannot name a cluster. An id is one
// NATS subject token: letters, digits, '-' and '_', at most 63, no dots or
// wildcards.
func ValidateClusterID(id string) error {
	if !idRe.MatchString(id) {
		return fmt.Errorf("cluster id %q: want 1-63 letters, digits, '-' or '_', starting with a letter or digit", id)
	}
	return nil
}

// Capacity is what a cluster has and uses.
type Capacity struct {
	MilliCPU     int64 `json:"milli_cpu"`
	MemoryMB     int64 `json:"memory_mb"`
	Pods         int64 `json:"pods"`
	UsedMilliCPU int64 `json:"used_milli_cpu"`
	UsedMemoryMB int64 `json:"used_memory_mb"`
	UsedPods     int64 `json:"used_pods"`
}

// Validate reports impossible figures.
func (c Capacity) Validate() error {
	for _, v := range []int64{c.MilliCPU, c.MemoryMB, c.Pods, c.UsedMilliCPU, c.UsedMemoryMB, c.UsedPods} {
		if v < 0 {
			return errors.New("capacity: negative figure")
		}
	}
	return nil
}

// Free returns what is left (never negative).
func (c Capacity) Free() (milliCPU, memoryMB, pods int64) {
	return max(c.MilliCPU-c.UsedMilliCPU, 0), max(c.MemoryMB-c.UsedMemoryMB, 0), max(c.Pods-c.UsedPods, 0)
}

// Load is the highest used fraction over the figures the cluster reports
// (0 idle, 1 full). A cluster that reports no capacity at all counts as full.
func (c Capacity) Load() float64 {
	load, any := 0.0, false
	if c.MilliCPU > 0 {
		any, load = true, float64(c.UsedMilliCPU)/float64(c.MilliCPU)
	}
	if c.MemoryMB > 0 {
		any, load = true, max(load, float64(c.UsedMemoryMB)/float64(c.MemoryMB))
	}
	if c.Pods > 0 {
		any, load = true, max(load, float64(c.UsedPods)/float64(c.Pods))
	}
	if !any {
		return 1
	}
	return min(load, 1)
}

// Link is a measured link from the sending cluster to a peer.
type Link struct {
	Peer          string  `json:"peer"`
	BandwidthMbps float64 `json:"bandwidth_mbps"`
	RTTMs         float64 `json:"rtt_ms"`
	// LossPct is the lost share of the latest probes, 0-100.
	LossPct float64 `json:"loss_pct,omitempty"`
	Up      bool    `json:"up"`
	// Samples counts the bandwidth measurements taken so far toward the
	// peer (0: not said, e.g. a figure from a links file): a peer reading
	// this cluster's hello knows a new one from a repeated one.
	Samples uint64 `json:"samples,omitempty"`
}

// Validate reports why l is not a usable measurement.
func (l Link) Validate() error {
	if err := ValidateClusterID(l.Peer); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	if !finiteNonNeg(l.BandwidthMbps) || !finiteNonNeg(l.RTTMs) {
		return fmt.Errorf("link to %s: bandwidth and rtt must be finite and >= 0", l.Peer)
	}
	if !finiteNonNeg(l.LossPct) || l.LossPct > 100 {
		return fmt.Errorf("link to %s: loss must be 0-100 %%", l.Peer)
	}
	return nil
}

// Hello is published by every cluster each interval on roam.hello.<id>.
type Hello struct {
	Version   int    `json:"v"`
	ClusterID string `json:"cluster_id"`
	// Incarnation names one run of the cluster's controller (a random id
	// drawn at start); Seq counts its hellos from 1. The MO keeps a hello
	// of the same incarnation only if its Seq is above the last one kept
	// and not far ahead of it (MaxSeqAhead), and takes a new incarnation
	// as a restart: its Seq starts over (see Registry.Observe).
	Incarnation string            `json:"incarnation,omitempty"`
	Seq         uint64            `json:"seq"`
	Tier        string            `json:"tier"`
	Labels      map[string]string `json:"labels,omitempty"`
	// ControllerURL is the controller's REST API (http://host:port).
	ControllerURL string `json:"controller_url"`
	// DataAddrs are where this cluster exposes foreign copies.
	DataAddrs []netip.Addr `json:"data_addrs,omitempty"`
	Capacity  Capacity     `json:"capacity"`
	Services  int          `json:"services"`
	Links     []Link       `json:"links,omitempty"`
	// ProbeAddr is where peers probe the path to this cluster (host:port,
	// UDP echo and TCP bulk; see ctrl/netprobe); empty: not probed.
	ProbeAddr string `json:"probe_addr,omitempty"`
	// Locator is this cluster's SRv6 locator (an IPv6 prefix, /16 to
	// /96): its nodes' SIDs come from it (lb.NodeSID), and every
	// cluster's locators are the only SIDs roam's data planes accept.
	// Unset: the cluster takes no part in SRv6 path mode.
	Locator netip.Prefix `json:"locator,omitzero"`
	// IntervalMs is the sender's hello interval (0: the MO's default).
	IntervalMs int64     `json:"interval_ms,omitempty"`
	SentAt     time.Time `json:"sent_at,omitzero"`
	// Placed lists the placements (request ids) this cluster has taken
	// in lately: its capacity figures show them, so the MO ends their
	// reservations. At most MaxPlaced.
	Placed []string `json:"placed,omitempty"`
}

// MaxPlaced bounds Hello.Placed.
const MaxPlaced = 256

// maxExplainClusters bounds PlacementRequest.ExplainClusters.
const maxExplainClusters = 256

// MaxSeqAhead bounds how far a hello's Seq may run ahead of the last one
// kept from the same incarnation (or, for a new incarnation, of 0): this
// many, plus one per 10 ms since the last hello was kept (a cluster sends
// at most 100 hellos a second). A hello further ahead is rejected and
// counted: one forged hello with a huge Seq cannot make the cluster's
// real hellos stale.
const MaxSeqAhead = 64

// seqAllowance is how far Seq may advance in elapsed.
func seqAllowance(elapsed time.Duration) uint64 {
	return MaxSeqAhead + uint64(max(elapsed, 0)/(10*time.Millisecond))
}

// NewIncarnation returns a fresh incarnation id for a controller run.
func NewIncarnation() string { return nuid.Next() }

// Validate reports why h cannot be registered.
func (h Hello) Validate() error {
	if h.Version != Version {
		return fmt.Errorf("hello: version %d, want %d", h.Version, Version)
	}
	if err := ValidateClusterID(h.ClusterID); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if h.Seq == 0 {
		return fmt.Errorf("hello %s: seq must be > 0", h.ClusterID)
	}
	if len(h.Incarnation) > 64 {
		return fmt.Errorf("hello %s: incarnation longer than 64 characters", h.ClusterID)
	}
	if h.Tier == "" || len(h.Tier) > 63 {
		return fmt.Errorf("hello %s: tier must be 1-63 characters", h.ClusterID)
	}
	if err := validateURL(h.ControllerURL); err != nil {
		return fmt.Errorf("hello %s: controller url: %w", h.ClusterID, err)
	}
	for _, a := range h.DataAddrs {
		if !a.IsValid() || a.IsUnspecified() {
			return fmt.Errorf("hello %s: data address %s must be set and specific", h.ClusterID, a)
		}
	}
	if h.Locator.IsValid() {
		if err := lb.ValidateLocator(h.Locator); err != nil {
			return fmt.Errorf("hello %s: %w", h.ClusterID, err)
		}
	}
	if err := h.Capacity.Validate(); err != nil {
		return fmt.Errorf("hello %s: %w", h.ClusterID, err)
	}
	if h.Services < 0 || h.IntervalMs < 0 {
		return fmt.Errorf("hello %s: services and interval must be >= 0", h.ClusterID)
	}
	for _, l := range h.Links {
		if err := l.Validate(); err != nil {
			return fmt.Errorf("hello %s: %w", h.ClusterID, err)
		}
	}
	if h.ProbeAddr != "" {
		if _, err := netip.ParseAddrPort(h.ProbeAddr); err != nil {
			return fmt.Errorf("hello %s: probe address: %w", h.ClusterID, err)
		}
	}
	if len(h.Placed) > MaxPlaced {
		return fmt.Errorf("hello %s: %d placed ids, at most %d", h.ClusterID, len(h.Placed), MaxPlaced)
	}
	for _, id := range h.Placed {
		if id == "" || len(id) > 128 {
			return fmt.Errorf("hello %s: placed id must be 1-128 characters", h.ClusterID)
		}
	}
	return nil
}

// LinkTo returns the link h reports toward peer.
func (h Hello) LinkTo(peer string) (Link, bool) {
	for _, l := range h.Links {
		if l.Peer == peer {
			return l, true
		}
	}
	return Link{}, false
}

// Port is one port of a service (the vocabulary is lb's).
type Port = lb.Port

// Resources is what one copy of a service asks for; a copy also takes one pod.
type Resources struct {
	MilliCPU int64 `json:"milli_cpu,omitempty"`
	MemoryMB int64 `json:"memory_mb,omitempty"`
}

// Constraints restrict where a service may go.
type Constraints struct {
	WantTiers       []string          `json:"want_tiers,omitempty"`
	ForbidTiers     []string          `json:"forbid_tiers,omitempty"`
	WantLabels      map[string]string `json:"want_labels,omitempty"`
	ExcludeClusters []string          `json:"exclude_clusters,omitempty"`
	// MinBandwidthMbps and MaxRTTMs bound the link between the candidate
	// and LinkFrom (the requester by default); 0 means no bound.
	MinBandwidthMbps float64  `json:"min_bandwidth_mbps,omitempty"`
	MaxRTTMs         float64  `json:"max_rtt_ms,omitempty"`
	LinkFrom         LinkFrom `json:"link_from,omitempty"`
}

// Validate reports impossible constraints.
func (c Constraints) Validate() error {
	if !finiteNonNeg(c.MinBandwidthMbps) || !finiteNonNeg(c.MaxRTTMs) {
		return errors.New("constraints: bandwidth and rtt bounds must be finite and >= 0")
	}
	switch c.LinkFrom {
	case "", LinkFromRequester, LinkFromHome:
	default:
		return fmt.Errorf("constraints: link_from %q: want requester or home", string(c.LinkFrom))
	}
	for _, id := range c.ExcludeClusters {
		if err := ValidateClusterID(id); err != nil {
			return fmt.Errorf("constraints: exclude: %w", err)
		}
	}
	return nil
}

// ServiceDescriptor is the service to place.
type ServiceDescriptor struct {
	Name        string      `json:"name"`
	Ports       []Port      `json:"ports"`
	Resources   Resources   `json:"resources"`
	Constraints Constraints `json:"constraints"`
}

// Validate reports why s cannot be placed.
func (s ServiceDescriptor) Validate() error {
	if s.Name == "" || len(s.Name) > 253 {
		return errors.New("service: name must be 1-253 characters")
	}
	if err := lb.ValidateWorkload(s.Ports, s.Resources.MilliCPU, s.Resources.MemoryMB); err != nil {
		return fmt.Errorf("service %s: %w", s.Name, err)
	}
	if err := s.Constraints.Validate(); err != nil {
		return fmt.Errorf("service %s: %w", s.Name, err)
	}
	return nil
}

// PlacementRequest asks the MO where a service should run.
type PlacementRequest struct {
	Version   int               `json:"v"`
	RequestID string            `json:"request_id"`
	Requester string            `json:"requester"` // cluster asking (where the service runs now)
	Home      string            `json:"home"`      // home cluster of the service
	Service   ServiceDescriptor `json:"service"`
	Reason    Reason            `json:"reason"`
	// Explain asks for the full judgement: the reply counts every
	// ruled-out cluster by reason and lists the first MaxFiltered with
	// their reason. ExplainClusters (implies Explain) names clusters whose
	// verdict is always given (Filtered or Explained). Without them, a
	// placed reply carries no per-cluster reasons (they cost a full scan).
	Explain         bool     `json:"explain,omitempty"`
	ExplainClusters []string `json:"explain_clusters,omitempty"`
}

// Validate reports why r cannot be answered.
func (r PlacementRequest) Validate() error {
	if r.Version != Version {
		return fmt.Errorf("placement request: version %d, want %d", r.Version, Version)
	}
	if r.RequestID == "" || len(r.RequestID) > 128 {
		return errors.New("placement request: request id must be 1-128 characters")
	}
	if err := ValidateClusterID(r.Requester); err != nil {
		return fmt.Errorf("placement request %s: requester: %w", r.RequestID, err)
	}
	if err := ValidateClusterID(r.Home); err != nil {
		return fmt.Errorf("placement request %s: home: %w", r.RequestID, err)
	}
	if err := r.Service.Validate(); err != nil {
		return fmt.Errorf("placement request %s: %w", r.RequestID, err)
	}
	if err := r.Reason.Validate(); err != nil {
		return fmt.Errorf("placement request %s: %w", r.RequestID, err)
	}
	if len(r.ExplainClusters) > maxExplainClusters {
		return fmt.Errorf("placement request %s: %d clusters to explain, at most %d", r.RequestID, len(r.ExplainClusters), maxExplainClusters)
	}
	for _, id := range r.ExplainClusters {
		if err := ValidateClusterID(id); err != nil {
			return fmt.Errorf("placement request %s: explain: %w", r.RequestID, err)
		}
	}
	return nil
}

// Candidate is a cluster a service may go to.
type Candidate struct {
	ClusterID     string       `json:"cluster_id"`
	ControllerURL string       `json:"controller_url"`
	DataAddrs     []netip.Addr `json:"data_addrs,omitempty"`
	Locator       netip.Prefix `json:"locator,omitzero"` // SRv6 (Hello.Locator)
	Tier          string       `json:"tier"`
	Score         float64      `json:"score"`
	Why           string       `json:"why,omitempty"`
}

// Filtered is a cluster the policy ruled out, and why.
type Filtered struct {
	ClusterID string `json:"cluster_id"`
	Why       string `json:"why"`
}

// PlacementReply answers a PlacementRequest. Exactly one of Destination
// and NoPlacement is set.
type PlacementReply struct {
	Version     int        `json:"v"`
	RequestID   string     `json:"request_id"`
	Destination *Candidate `json:"destination,omitempty"`
	// Reason is a short human reason for the choice.
	Reason       string      `json:"reason,omitempty"`
	Alternatives []Candidate `json:"alternatives,omitempty"`
	// NoPlacement says why nothing fits; Filtered says why each cluster
	// was ruled out.
	NoPlacement string `json:"no_placement,omitempty"`
	// Explain is true when every cluster was judged (the request asked,
	// or nothing fits): Filtered lists the first clusters ruled out (at
	// most MaxFiltered, plus those the request named); FilteredTotal and
	// FilteredByReason count all of them. Explained gives the verdict on
	// named clusters that were not ruled out (or are unknown).
	Explain          bool           `json:"explain,omitempty"`
	Filtered         []Filtered     `json:"filtered,omitempty"`
	FilteredTotal    int            `json:"filtered_total,omitempty"`
	FilteredByReason map[string]int `json:"filtered_by_reason,omitempty"`
	Explained        []Filtered     `json:"explained,omitempty"`
	Policy           string         `json:"policy,omitempty"`
	// Local is true when a client decided from its cached hellos because
	// the MO did not answer.
	Local     bool   `json:"local,omitempty"`
	DecidedBy string `json:"decided_by,omitempty"`
}

// Validate reports an inconsistent reply.
func (r PlacementReply) Validate() error {
	if r.Version != Version {
		return fmt.Errorf("placement reply: version %d, want %d", r.Version, Version)
	}
	if r.RequestID == "" {
		return errors.New("placement reply: request id must be set")
	}
	if (r.Destination == nil) == (r.NoPlacement == "") {
		return fmt.Errorf("placement reply %s: exactly one of destination and no_placement", r.RequestID)
	}
	if r.Destination != nil {
		if err := ValidateClusterID(r.Destination.ClusterID); err != nil {
			return fmt.Errorf("placement reply %s: destination: %w", r.RequestID, err)
		}
	}
	return nil
}

// OK reports whether r names a destination.
func (r PlacementReply) OK() bool { return r.Destination != nil }

// DecodeHello parses and validates a hello.
func DecodeHello(b []byte) (Hello, error) {
	var h Hello
	if err := decode(b, &h); err != nil {
		return Hello{}, fmt.Errorf("decode hello: %w", err)
	}
	if err := h.Validate(); err != nil {
		return Hello{}, fmt.Errorf("decode hello: %w", err)
	}
	return h, nil
}

// DecodePlacementRequest parses and validates a placement request.
func DecodePlacementRequest(b []byte) (PlacementRequest, error) {
	var r PlacementRequest
	if err := decodePlacementRequestInto(b, &r); err != nil {
		return PlacementRequest{}, err
	}
	return r, nil
}

// decodePlacementRequestInto is DecodePlacementRequest into *r (zeroed
// first), for a caller that keeps r from one request to the next.
func decodePlacementRequestInto(b []byte, r *PlacementRequest) error {
	*r = PlacementRequest{}
	// The hand-written decoder (msgfast.go) takes what json.Marshal
	// writes; encoding/json decodes anything else.
	if len(b) > MaxMessageSize || !fastRequest(b, r) {
		*r = PlacementRequest{}
		if err := decode(b, r); err != nil {
			return fmt.Errorf("decode placement request: %w", err)
		}
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("decode placement request: %w", err)
	}
	return nil
}

// DecodePlacementReply parses and validates a placement reply.
func DecodePlacementReply(b []byte) (PlacementReply, error) { return decodePlacementReply(b, false) }

// decodePlacementReply is DecodePlacementReply; owned says that b is the
// caller's to give away (never written again), so that the reply's
// strings may share its bytes instead of a copy of them.
func decodePlacementReply(b []byte, owned bool) (PlacementReply, error) {
	var r PlacementReply
	// As for requests: the hand-written decoder, else encoding/json.
	if len(b) > MaxMessageSize || !fastReply(b, &r, owned) {
		// A reply of its own, so that r stays off the heap.
		var slow PlacementReply
		if err := decode(b, &slow); err != nil {
			return PlacementReply{}, fmt.Errorf("decode placement reply: %w", err)
		}
		r = slow
	}
	if err := r.Validate(); err != nil {
		return PlacementReply{}, fmt.Errorf("decode placement reply: %w", err)
	}
	return r, nil
}

func decode(b []byte, v any) error {
	if len(b) > MaxMessageSize {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), MaxMessageSize)
	}
	// Unmarshal also rejects trailing data after the message.
	return json.Unmarshal(b, v)
}

func validateURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want http(s)://host:port", s)
	}
	return nil
}

func finiteNonNeg(f float64) bool { return f >= 0 && !math.IsInf(f, 0) && !math.IsNaN(f) }
