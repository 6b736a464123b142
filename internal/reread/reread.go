// Package reread keeps a value read from files current without a restart
// (a rotated certificate, an edited users file): at each use it compares
// the files' size and modification time with those of the last read and,
// when one changed, reads them again. A read that fails leaves the previous
// value in use and is not tried again until the files change again; Err
// says why it failed. It imports nothing of roam (a leaf package).
package reread

import (
	"os"
	"slices"
	"sync"
	"time"
)

// Files is a value of type T read from a set of files.
type Files[T any] struct {
	paths []string
	read  func(prev T) (T, error)

	mu    sync.Mutex
	stamp []stamp
	v     T
	err   error
	loads int
}

type stamp struct {
	mod  time.Time
	size int64
}

func stamps(paths []string) ([]stamp, error) {
	out := make([]stamp, len(paths))
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		out[i] = stamp{fi.ModTime(), fi.Size()}
	}
	return out, nil
}

// New reads the value with read (given the zero T as the previous value)
// and returns it kept current: later reads are given the value in use, so
// that read may refuse a change (an identity that must not change). An
// error of the first read, or of a file's stat, is New's.
func New[T any](read func(prev T) (T, error), paths ...string) (*Files[T], error) {
	st, err := stamps(paths)
	if err != nil {
		return nil, err
	}
	f := &Files[T]{paths: paths, read: read, stamp: st}
	if f.v, err = read(f.v); err != nil {
		return nil, err
	}
	f.loads = 1
	return f, nil
}

// refresh reads the files again if one changed (f.mu held).
func (f *Files[T]) refresh() {
	st, err := stamps(f.paths)
	if err != nil || slices.Equal(st, f.stamp) {
		return // a file being replaced: keep the value in use
	}
	f.stamp = st // a failed read is not retried until the files change again
	v, err := f.read(f.v)
	if err != nil {
		f.err = err
		return
	}
	f.v, f.err = v, nil
	f.loads++
}

// Get returns the value, read again first if a file changed.
func (f *Files[T]) Get() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh()
	return f.v
}

// Err is why the latest change of the files could not be read (nil: the
// value in use is the files' latest).
func (f *Files[T]) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh()
	return f.err
}

// Loads counts the successful reads (1 after New; one more per change).
func (f *Files[T]) Loads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh()
	return f.loads
}
