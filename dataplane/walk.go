package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// walkMap calls fn for every entry of m, reading it in batches (one
// syscall per 4096 entries); where batch lookups are not supported it falls
// back to the per-entry iterator.
func walkMap[K, V any](m *ebpf.Map, fn func(K, V)) error {
	const chunk = 4096
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			if n > 0 {
				return fmt.Errorf("walk %s: batch lookup failed midway: %w", m, err)
			}
			return iterateMap(m, fn)
		case err != nil:
			return fmt.Errorf("walk %s: %w", m, err)
		}
	}
}

func iterateMap[K, V any](m *ebpf.Map, fn func(K, V)) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk %s: %w", m, err)
	}
	return nil
}
