package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// walkConntrack calls fn for every conntrack entry, reading the map in
// batches (one syscall per 4096 entries); where batch lookups are not
// supported it falls back to the per-entry iterator.
func (d *Dataplane) walkConntrack(fn func(CTKey, CTValue)) error {
	const chunk = 4096
	keys := make([]CTKey, chunk)
	vals := make([]CTValue, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.maps.RoamConntrack.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			if n > 0 {
				return fmt.Errorf("walk conntrack: batch lookup failed midway: %w", err)
			}
			return d.iterateConntrack(fn)
		case err != nil:
			return fmt.Errorf("walk conntrack: %w", err)
		}
	}
}

func (d *Dataplane) iterateConntrack(fn func(CTKey, CTValue)) error {
	var (
		k CTKey
		v CTValue
	)
	it := d.maps.RoamConntrack.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk conntrack: %w", err)
	}
	return nil
}
