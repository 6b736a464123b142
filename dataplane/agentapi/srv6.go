package agentapi

// The SRv6 path mode's calls at a location (a node that runs a copy of a
// service another cluster's home redirects to by SRv6):
//
//	POST /v1/srv6/copies  {frontends, state}           → {}  serving | draining | gone
//	POST /v1/srv6/returns {frontends, home_sid, remove} → {}  the copy's answers back to its home
//	GET  /v1/srv6/node                                  → {sid, locators}  the node's SID (its controller checks it)
//
// The frontends are the home's (the inner destination of the packets the
// home encapsulates). A data plane without SRv6 answers 501.

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// SRv6Dataplane is what a node needs for the SRv6 calls; the agent's data
// plane implements it (cmd/roam-agent: the copy state in BPF, the
// frontend's address on the node, the kernel's seg6 return route).
type SRv6Dataplane interface {
	// SetSRv6Copy says what the copy of f here does.
	SetSRv6Copy(f lb.Frontend, s dataplane.SRv6State) error
	// SetSRv6Return routes what the copy answers from f's address back
	// to the home's SID (remove: stop doing so).
	SetSRv6Return(f lb.Frontend, homeSID netip.Addr, remove bool) error
	// SRv6Config is the node's SRv6 setup: its SID and roam's locators.
	SRv6Config() dataplane.SRv6Config
}

// SRv6Node is a node's SRv6 setup, as GET /v1/srv6/node answers it.
type SRv6Node struct {
	SID      netip.Addr     `json:"sid,omitzero"` // unset: SRv6 is off on the node
	Locators []netip.Prefix `json:"locators"`
}

// ParseSRv6State reads serving, draining or gone.
func ParseSRv6State(s string) (dataplane.SRv6State, error) {
	for _, st := range []dataplane.SRv6State{dataplane.SRv6Serving, dataplane.SRv6Draining, dataplane.SRv6Gone} {
		if s == st.String() {
			return st, nil
		}
	}
	return 0, fmt.Errorf("srv6 copy state %q: want serving, draining or gone", s)
}

type srv6CopiesRequest struct {
	Frontends []*lb.Frontend `json:"frontends"`
	State     string         `json:"state"`
}

type srv6ReturnsRequest struct {
	Frontends []*lb.Frontend `json:"frontends"`
	HomeSID   netip.Addr     `json:"home_sid"`
	Remove    bool           `json:"remove,omitempty"`
}

func (s *Server) srv6dp() (SRv6Dataplane, error) {
	d, ok := s.dp.(SRv6Dataplane)
	if !ok {
		return nil, apiErr(http.StatusNotImplemented, ReasonBadRequest, "srv6: this node's data plane has no SRv6 path mode")
	}
	return d, nil
}

func (s *Server) srv6Copies(w http.ResponseWriter, r *http.Request) error {
	d, err := s.srv6dp()
	if err != nil {
		return err
	}
	var req srv6CopiesRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	fs, err := batchFrontends(len(req.Frontends), func(i int) *lb.Frontend { return req.Frontends[i] })
	if err != nil {
		return err
	}
	st, err := ParseSRv6State(req.State)
	if err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadRequest, "read request: %v", err)
	}
	for _, f := range fs {
		if err := d.SetSRv6Copy(f, st); err != nil {
			return dpErr("set srv6 copy of", f, err)
		}
	}
	s.log.Info("srv6 copies", "frontends", fs, "state", st)
	writeJSON(w, http.StatusOK, emptyReply{})
	return nil
}

func (s *Server) srv6Returns(w http.ResponseWriter, r *http.Request) error {
	d, err := s.srv6dp()
	if err != nil {
		return err
	}
	var req srv6ReturnsRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	fs, err := batchFrontends(len(req.Frontends), func(i int) *lb.Frontend { return req.Frontends[i] })
	if err != nil {
		return err
	}
	if !req.HomeSID.Is6() || req.HomeSID.Is4In6() {
		return apiErr(http.StatusBadRequest, ReasonBadTarget, "read request: home_sid %v: want an IPv6 SID", req.HomeSID)
	}
	for _, f := range fs {
		if err := d.SetSRv6Return(f, req.HomeSID, req.Remove); err != nil {
			return dpErr("set srv6 return of", f, err)
		}
	}
	s.log.Info("srv6 returns", "frontends", fs, "home_sid", req.HomeSID, "remove", req.Remove)
	writeJSON(w, http.StatusOK, emptyReply{})
	return nil
}

func (s *Server) srv6Node(w http.ResponseWriter, r *http.Request) error {
	d, err := s.srv6dp()
	if err != nil {
		return err
	}
	c := d.SRv6Config()
	writeJSON(w, http.StatusOK, SRv6Node{SID: c.SID, Locators: c.Locators})
	return nil
}

func ptrs(fs []lb.Frontend) []*lb.Frontend {
	out := make([]*lb.Frontend, len(fs))
	for i := range fs {
		out[i] = &fs[i]
	}
	return out
}

// SetSRv6Copies sets the state of the copies of fs on the agent's node.
func (c *Client) SetSRv6Copies(ctx context.Context, fs []lb.Frontend, st dataplane.SRv6State) error {
	if err := c.do(ctx, http.MethodPost, "/v1/srv6/copies", srv6CopiesRequest{Frontends: ptrs(fs), State: st.String()}, nil); err != nil {
		return fmt.Errorf("set srv6 copies %v %s: %w", fs, st, err)
	}
	return nil
}

// SetSRv6Returns routes the answers from fs' addresses to homeSID on the
// agent's node (remove: no longer).
func (c *Client) SetSRv6Returns(ctx context.Context, fs []lb.Frontend, homeSID netip.Addr, remove bool) error {
	if err := c.do(ctx, http.MethodPost, "/v1/srv6/returns", srv6ReturnsRequest{Frontends: ptrs(fs), HomeSID: homeSID, Remove: remove}, nil); err != nil {
		return fmt.Errorf("set srv6 returns %v -> %s: %w", fs, homeSID, err)
	}
	return nil
}

// SetSRv6Copies sets the state of the copies of fs on every node.
func (g Group) SetSRv6Copies(ctx context.Context, fs []lb.Frontend, st dataplane.SRv6State) error {
	if err := joinNodes(g, g.each(func(_ int, c *Client) error { return c.SetSRv6Copies(ctx, fs, st) })); err != nil {
		return fmt.Errorf("set srv6 copies on every node: %w", err)
	}
	return nil
}

// SetSRv6Returns sets the return routes of fs on every node.
func (g Group) SetSRv6Returns(ctx context.Context, fs []lb.Frontend, homeSID netip.Addr, remove bool) error {
	if err := joinNodes(g, g.each(func(_ int, c *Client) error { return c.SetSRv6Returns(ctx, fs, homeSID, remove) })); err != nil {
		return fmt.Errorf("set srv6 returns on every node: %w", err)
	}
	return nil
}

// SRv6Node returns the agent's node's SRv6 setup.
func (c *Client) SRv6Node(ctx context.Context) (SRv6Node, error) {
	var out SRv6Node
	if err := c.do(ctx, http.MethodGet, "/v1/srv6/node", nil, &out); err != nil {
		return SRv6Node{}, fmt.Errorf("srv6 node: %w", err)
	}
	return out, nil
}

// NodeSID is a node's SID as its agent says it. Old: the agent is from
// before per-node SIDs (it has no GET /v1/srv6/node: 404), so its SID is
// unknown; such a node had its cluster's node 0's SID, and its cluster
// must use that one alone until every agent is upgraded.
type NodeSID struct {
	SID netip.Addr // unset where SRv6 is off or the agent is old
	Old bool
}

// SRv6SIDs returns every node's SID, in the group's order. An agent that
// answers 404 (no such route: an agent from before per-node SIDs) is Old,
// not an error.
func (g Group) SRv6SIDs(ctx context.Context) ([]NodeSID, error) {
	sids := make([]NodeSID, len(g))
	errs := g.each(func(i int, c *Client) error {
		n, err := c.SRv6Node(ctx)
		if IsNotFound(err) {
			sids[i].Old = true
			return nil
		}
		sids[i].SID = n.SID
		return err
	})
	if err := joinNodes(g, errs); err != nil {
		return nil, fmt.Errorf("srv6 SIDs of every node: %w", err)
	}
	return sids, nil
}
