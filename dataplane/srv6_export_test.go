package dataplane

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// What the external SRv6 tests read of, or do to, the internals.

// ReadOnlySRv6Hold swaps the data plane's handle on roam_srv6_prev (the
// previous SRv6 path's hold, written by Commit) for one opened read-only
// from its pin, so that the kernel refuses Commit's write of the hold
// (EPERM). restore puts the writable handle back.
func (d *Dataplane) ReadOnlySRv6Hold() (restore func(), err error) {
	ro, err := ebpf.LoadPinnedMap(filepath.Join(d.cfg.PinPath, "roam_srv6_prev"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open roam_srv6_prev read-only: %w", err)
	}
	d.mu.Lock()
	rw := d.maps.RoamSrv6Prev
	d.maps.RoamSrv6Prev = ro
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		d.maps.RoamSrv6Prev = rw
		d.mu.Unlock()
		ro.Close()
	}, nil
}
