package controller

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/meta"
)

// Directory states, as /readyz and roam_ctrl_directory_synced show them.
const (
	DirectorySynced  = "synced"  // the MO's view is loaded and followed
	DirectoryStale   = "stale"   // the view is not loaded yet: the directory saved before the restart serves
	DirectoryLoading = "loading" // the view is not loaded yet and none was saved
	DirectoryStatic  = "static"  // no MO: the configured peers only
)

// lastKnown keeps the directory across restarts: once the meta client
// holds the MO's view, what it lists is saved in the store (when it
// changes); a controller restarted while the view cannot be read (NATS or
// the MO down) serves the saved entries, marked stale, until the view is
// loaded again. A cluster it never saw is in neither, so it stays refused;
// a saved one is still recognised by its certificate, as before.
type lastKnown struct {
	mc *meta.Client
	st *store.Store

	mu       sync.Mutex
	saved    store.Directory
	restored bool // saved was read from the store at start
}

func newLastKnown(mc *meta.Client, st *store.Store) (*lastKnown, error) {
	k := &lastKnown{mc: mc, st: st}
	d, ok, err := st.Directory()
	if err != nil {
		return nil, err
	}
	k.saved, k.restored = d, ok
	return k, nil
}

func (k *lastKnown) synced() bool {
	select {
	case <-k.mc.Synced():
		return true
	default:
		return false
	}
}

// hellos are the view's hellos; until the view is loaded, with the saved
// entries the view has not delivered yet.
func (k *lastKnown) hellos() []meta.Hello {
	hs := k.mc.Clusters()
	if k.synced() {
		return hs
	}
	k.mu.Lock()
	saved := k.saved.Clusters
	k.mu.Unlock()
	for _, e := range saved {
		if !slices.ContainsFunc(hs, func(h meta.Hello) bool { return h.ClusterID == e.ClusterID }) {
			hs = append(hs, meta.Hello{ClusterID: e.ClusterID, ControllerURL: e.ControllerURL, DataAddrs: e.DataAddrs})
		}
	}
	return hs
}

// DirectoryState is what /readyz reports of the directory.
type DirectoryState struct {
	State string `json:"state"`
	// Saved is when the stale directory was saved (state stale).
	Saved time.Time `json:"saved,omitzero"`
	// Clusters are the ids the directory has a controller URL for.
	Clusters []string `json:"clusters"`
}

func (k *lastKnown) state() DirectoryState {
	if k.synced() {
		return DirectoryState{State: DirectorySynced}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.restored && len(k.saved.Clusters) > 0 {
		return DirectoryState{State: DirectoryStale, Saved: k.saved.Saved}
	}
	return DirectoryState{State: DirectoryLoading}
}

// save writes the view's directory when it differs from the saved one.
func (k *lastKnown) save(now time.Time) error {
	var es []store.DirectoryEntry
	for _, h := range k.mc.Clusters() {
		if h.ControllerURL != "" {
			es = append(es, store.DirectoryEntry{ClusterID: h.ClusterID, ControllerURL: h.ControllerURL, DataAddrs: h.DataAddrs})
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if slices.EqualFunc(es, k.saved.Clusters, func(a, b store.DirectoryEntry) bool {
		return a.ClusterID == b.ClusterID && a.ControllerURL == b.ControllerURL && slices.Equal(a.DataAddrs, b.DataAddrs)
	}) {
		return nil
	}
	d := store.Directory{Saved: now.UTC(), Clusters: es}
	if err := k.st.PutDirectory(d); err != nil {
		return err
	}
	k.saved, k.restored = d, true
	return nil
}

// run saves the directory once the view is loaded, then every interval.
func (k *lastKnown) run(ctx context.Context, every time.Duration, log *slog.Logger) {
	select {
	case <-ctx.Done():
		return
	case <-k.mc.Synced():
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := k.save(time.Now()); err != nil {
			log.Warn("save directory", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
