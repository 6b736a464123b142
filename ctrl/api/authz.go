package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/migrate"
)

// Reasons a call is refused for who made it (label of
// roam_ctrl_auth_denied_total).
const (
	DenyNoCredentials   = "no_credentials"     // no token, no certificate
	DenyBadToken        = "bad_token"          // a token no user has
	DenyPeerToken       = "peer_token"         // an old shared-secret peer token
	DenyRole            = "role"               // a user whose role does not allow the route
	DenyBadCertificate  = "bad_certificate"    // a certificate this installation's CA did not issue
	DenyNotController   = "not_controller"     // a node's certificate on the controller's API
	DenySelf            = "self"               // this cluster's own identity calling in
	DenyPeerOnUserRoute = "peer_on_user_route" // a controller's identity on a user route
	DenyNoCertificate   = "no_certificate"     // a peer route without a client certificate
	DenyPeerDisabled    = "peer_disabled"      // no identity configured here
	DenyCommand         = "command"            // a command service from a peer, or without --allow-command
	DenyNotHost         = "not_host"           // a peer acting on a service it does not host
	DenyNotHome         = "not_home"           // a peer acting on a copy whose home it is not
	DenyNotInvolved     = "not_involved"       // a peer asking where a service it has no part in runs
	DenyUnknownCluster  = "unknown_cluster"    // a message naming a cluster the directory does not list
	DenyEndpoint        = "endpoint"           // an endpoint outside what the cluster declares
	DenyEpoch           = "epoch"              // a home naming a copy of another epoch than the one here
)

var denyReasons = []string{DenyNoCredentials, DenyBadToken, DenyPeerToken, DenyRole, DenyBadCertificate, DenyNotController,
	DenySelf, DenyPeerOnUserRoute, DenyNoCertificate, DenyPeerDisabled, DenyCommand, DenyNotHost, DenyNotHome,
	DenyNotInvolved, DenyUnknownCluster, DenyEndpoint, DenyEpoch}

// deny counts a refusal and returns its API error.
func (s *Server) deny(status int, reason, format string, args ...any) error {
	s.denied.WithLabelValues(reason).Inc()
	code := ReasonForbidden
	if status == http.StatusUnauthorized {
		code = ReasonUnauthorized
	}
	msg := fmt.Sprintf(format, args...)
	s.log.Warn("call refused", "reason", reason, "err", msg)
	return apiErr(status, code, "%s: %s", reason, msg)
}

// record is this cluster's record of name, or false.
func (s *Server) record(name string) (ctrl.Record, bool) {
	r, err := s.cfg.Engine.Get(name)
	return r, err == nil
}

// hostedBy reports whether the record of name here says it runs at cluster
// (an abroad service of ours).
func (s *Server) hostedBy(name, cluster string) bool {
	r, ok := s.record(name)
	return ok && r.Kind == ctrl.KindAbroad && r.Cluster == cluster
}

// homeSaysHost asks home whether its service name runs at cluster: how a
// third cluster learns that a mover (which is not the home) acts for the
// copy it hosts.
func (s *Server) homeSaysHost(r *http.Request, home, name, cluster string) error {
	ok, err := s.cfg.Peers.hosts(r.Context(), home, name, cluster)
	if err != nil {
		return fmt.Errorf("could not ask its home %s: %w", home, err)
	}
	if !ok {
		return fmt.Errorf("its home %s says it does not run at %s", home, cluster)
	}
	return nil
}

// peerDeploy: a foreign copy is asked for by its home, or by the cluster
// hosting it now (a move on, confirmed by the home; or a move back home,
// confirmed by our own record). Never a command.
func (s *Server) peerDeploy(w http.ResponseWriter, r *http.Request) error {
	var req ctrl.ForeignRequest
	if err := s.decode(r, &req); err != nil {
		return err
	}
	from := callerOf(r)
	name := req.Service.Name
	if len(req.Service.Command) > 0 {
		return s.deny(http.StatusForbidden, DenyCommand, "%s asked to run a command: no peer may", from.Cluster)
	}
	switch {
	case req.Home == from.Cluster:
		if rec, ok := s.record(name); ok && !(rec.Kind == ctrl.KindForeign && rec.Home == from.Cluster) {
			return s.deny(http.StatusForbidden, DenyNotHome, "%s asked for a copy of %s, a %s service of %s here", from.Cluster, name, rec.Kind, rec.Home)
		}
	case req.Home == s.cfg.Engine.ClusterID():
		if !s.hostedBy(name, from.Cluster) {
			return s.deny(http.StatusForbidden, DenyNotHost, "%s asked to bring %s home, but it does not run there", from.Cluster, name)
		}
	default:
		if err := s.homeSaysHost(r, req.Home, name, from.Cluster); err != nil {
			return s.deny(http.StatusForbidden, DenyNotHome, "%s asked for a copy of %s's %s: %v", from.Cluster, req.Home, name, err)
		}
	}
	if _, ok := s.cfg.Peers.Dir.ControllerURL(req.Home); !ok && req.Home != s.cfg.Engine.ClusterID() {
		return s.deny(http.StatusForbidden, DenyUnknownCluster, "home %s is not in the directory", req.Home)
	}
	rep, err := s.cfg.Engine.DeployForeign(r.Context(), from, req)
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, rep)
}

// peerRemove: a foreign copy is removed by its home, or by the cluster
// hosting the service (a mover rolling back the copy it asked for, the
// home confirming; or the copy it started here for a move home).
func (s *Server) peerRemove(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	home, name, from := q.Get("home"), r.PathValue("name"), callerOf(r)
	if home == "" {
		return apiErr(http.StatusBadRequest, ReasonInvalid, "query parameter home is required")
	}
	epoch := ctrl.Epoch{MigrationID: q.Get("migration_id")}
	if v := q.Get("epoch"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return apiErr(http.StatusBadRequest, ReasonInvalid, "query parameter epoch: %v", err)
		}
		epoch.N = n
	}
	switch {
	case home == from.Cluster:
		if rec, ok := s.record(name); ok && !(rec.Kind == ctrl.KindForeign && rec.Home == from.Cluster) {
			return s.deny(http.StatusForbidden, DenyNotHome, "%s asked to remove %s, a %s service of %s here", from.Cluster, name, rec.Kind, rec.Home)
		}
	case home == s.cfg.Engine.ClusterID():
		// Only the copy a mover started here to bring the service home,
		// which our record still places at the mover.
		if rec, ok := s.record(name); !ok || !(rec.Kind == ctrl.KindLocal || (rec.Kind == ctrl.KindAbroad && rec.Cluster == from.Cluster)) {
			return s.deny(http.StatusForbidden, DenyNotHost, "%s asked to remove %s, which it does not host", from.Cluster, name)
		}
	default:
		if err := s.homeSaysHost(r, home, name, from.Cluster); err != nil {
			return s.deny(http.StatusForbidden, DenyNotHome, "%s asked to remove %s's %s: %v", from.Cluster, home, name, err)
		}
	}
	if err := s.cfg.Engine.RemoveForeign(r.Context(), from, name, home, epoch); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// peerMovedOn: only the cluster hosting the service may say it moved on,
// to a cluster the directory lists, at endpoints that cluster declares.
func (s *Server) peerMovedOn(w http.ResponseWriter, r *http.Request) error {
	var n ctrl.MovedOn
	if err := s.decode(r, &n); err != nil {
		return err
	}
	if n.Service == "" || n.Epoch.MigrationID == "" || validID(n.From) != nil || validID(n.To) != nil {
		return apiErr(http.StatusBadRequest, ReasonInvalid, "moved-on: service, epoch.migration_id, from and to are required")
	}
	from := callerOf(r)
	if n.From != from.Cluster || !s.hostedBy(n.Service, from.Cluster) {
		return s.deny(http.StatusForbidden, DenyNotHost, "%s sent a moved-on notice for %s (from %s), which it does not host", from.Cluster, n.Service, n.From)
	}
	if n.To != s.cfg.Engine.ClusterID() {
		if _, ok := s.cfg.Peers.Dir.ControllerURL(n.To); !ok {
			return s.deny(http.StatusForbidden, DenyUnknownCluster, "moved-on to %s, which the directory does not list", n.To)
		}
		for _, ep := range n.Endpoints {
			if err := s.cfg.Peers.Endpoints.Check(s.cfg.Peers.Dir, n.To, ep); err != nil {
				return s.deny(http.StatusForbidden, DenyEndpoint, "moved-on from %s: %v", from.Cluster, err)
			}
		}
	}
	// The URL of To is the directory's; the one in the notice is not used.
	n.ToURL = ""
	m, err := s.cfg.Engine.MovedOn(r.Context(), from, n)
	if errors.Is(err, migrate.ErrCrash) {
		panic(http.ErrAbortHandler) // the test hook: drop the connection as a killed process would
	}
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, m)
}

// peerDrained: only the home of the foreign copy here may say its load
// balancer has no live flow left to it, and only of the copy's own epoch
// (a late word about an older copy must not stop a newer one).
func (s *Server) peerDrained(w http.ResponseWriter, r *http.Request) error {
	epoch, err := requiredEpoch(r, "drained")
	if err != nil {
		return err
	}
	rec, err := s.foreignOf(r, r.PathValue("name"))
	if err != nil {
		return err
	}
	if rec.Epoch != epoch {
		return s.deny(http.StatusForbidden, DenyEpoch, "%s said copy %s of %s is drained, the copy here is %s", callerOf(r).Cluster, epoch, rec.Service.Name, rec.Epoch)
	}
	if err := s.cfg.Engine.Drained(r.Context(), callerOf(r), rec.Service.Name, epoch); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// requiredEpoch reads the epoch a peer call names in its query
// (migration_id and epoch, both required; epochQuery writes them). what
// names the call in the error.
func requiredEpoch(r *http.Request, what string) (ctrl.Epoch, error) {
	q := r.URL.Query()
	n, err := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if err != nil || q.Get("migration_id") == "" {
		return ctrl.Epoch{}, apiErr(http.StatusBadRequest, ReasonInvalid, "%s: query parameters epoch (a number) and migration_id are required", what)
	}
	return ctrl.Epoch{MigrationID: q.Get("migration_id"), N: n}, nil
}

// peerSRv6Gone: a location of an SRv6 service homed here says its copy of
// an epoch is gone. The engine hears it only from the cluster a move of
// the service left, while that move waits for it (migrate.SRv6Gone).
func (s *Server) peerSRv6Gone(w http.ResponseWriter, r *http.Request) error {
	epoch, err := requiredEpoch(r, "srv6-gone")
	if err != nil {
		return err
	}
	if err := s.cfg.Engine.SRv6Gone(r.Context(), callerOf(r), r.PathValue("name"), epoch); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// peerWhere answers in full only a cluster the service concerns: where it
// runs, or a side of its latest move. Another may ask only whether it
// runs at a given cluster (?host=, how a receiver checks a mover); asked
// plainly, it is told the service is not known to it.
func (s *Server) peerWhere(w http.ResponseWriter, r *http.Request) error {
	name, from := r.PathValue("name"), callerOf(r)
	wh, err := s.cfg.Engine.Where(r.Context(), from, name)
	if err != nil {
		return err
	}
	involved := wh.Cluster == from.Cluster
	if rec, ok := s.record(name); ok && rec.LastMigration != nil && (rec.LastMigration.From == from.Cluster || rec.LastMigration.To == from.Cluster) {
		involved = true
	}
	if involved || !wh.Known {
		return reply(w, http.StatusOK, wh)
	}
	out := ctrl.Where{Home: wh.Home, Incarnation: wh.Incarnation}
	if host := r.URL.Query().Get("host"); host != "" {
		if wh.Cluster == host {
			out.Known, out.Kind, out.Cluster = true, wh.Kind, host
		}
		return reply(w, http.StatusOK, out)
	}
	s.denied.WithLabelValues(DenyNotInvolved).Inc()
	return reply(w, http.StatusOK, out)
}

func (s *Server) peerHealth(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, s.cfg.Engine.Health())
}

// foreignOf is the foreign record of name whose home is the caller.
func (s *Server) foreignOf(r *http.Request, name string) (ctrl.Record, error) {
	from := callerOf(r)
	rec, ok := s.record(name)
	if !ok {
		return rec, apiErr(http.StatusNotFound, ReasonNotFound, "service %s not found", name)
	}
	if rec.Kind != ctrl.KindForeign || rec.Home != from.Cluster {
		return rec, s.deny(http.StatusForbidden, DenyNotHome, "%s is not the home of %s", from.Cluster, name)
	}
	return rec, nil
}

// peerGet answers a home's forwarded GET of its service running here.
func (s *Server) peerGet(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.foreignOf(r, r.PathValue("name"))
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, rec)
}

// peerMigrate runs a home's forwarded migrate of its service running here.
func (s *Server) peerMigrate(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.foreignOf(r, r.PathValue("name")); err != nil {
		return err
	}
	return s.migrate(w, r)
}
