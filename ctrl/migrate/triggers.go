package migrate

import (
	"context"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/meta"
)

// Policy moves abroad services whose link from here fell below their need
// (from the hellos' measured links). The controller calls it every
// PolicyInterval.
func (e *Engine) Policy(ctx context.Context) {
	if e.cfg.Hellos == nil {
		return
	}
	hs := e.cfg.Hellos()
	recs, err := e.st.Records()
	if err != nil {
		e.log.Warn("policy: read records", "err", err)
		return
	}
	for _, r := range recs {
		if r.Kind != ctrl.KindAbroad || r.Service.NeedMbps <= 0 {
			continue
		}
		bw, ok := linkBandwidth(hs, e.cfg.ClusterID, r.Cluster)
		if !ok || bw >= r.Service.NeedMbps {
			continue
		}
		if r.LastMigration != nil && time.Since(r.LastMigration.Started) < e.cfg.PolicyCooldown {
			continue
		}
		e.log.Info("policy: link below the service's need, moving it", "service", r.Service.Name, "cluster", r.Cluster, "mbps", bw, "need", r.Service.NeedMbps)
		if _, err := e.Migrate(ctx, r.Service.Name, ctrl.MigrateRequest{Reason: string(meta.ReasonNetworkChange)}); err != nil {
			e.log.Warn("policy migration", "service", r.Service.Name, "err", err)
		}
	}
}

// linkBandwidth is the measured bandwidth between clusters a and b, from
// either one's hello.
func linkBandwidth(hs []meta.Hello, a, b string) (float64, bool) {
	for _, h := range hs {
		var peer string
		switch h.ClusterID {
		case a:
			peer = b
		case b:
			peer = a
		default:
			continue
		}
		if l, ok := h.LinkTo(peer); ok && l.Up {
			return l.BandwidthMbps, true
		}
	}
	return 0, false
}
