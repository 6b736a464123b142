package reread

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestFiles: a change is read at the next use; a change that does not
// read keeps the value in use, says why, and is not read again until the
// files change again; the previous value reaches read; a missing file at
// New is New's error.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write := func(p, s string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		// Set the time: two writes within the file system's clock tick
		// must still count as a change.
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write(a, "1", t0)
	write(b, "2", t0)
	reads := 0
	var prevs []int
	sum := func(prev int) (int, error) {
		reads++
		prevs = append(prevs, prev)
		n := 0
		for _, p := range []string{a, b} {
			raw, err := os.ReadFile(p)
			if err != nil {
				return 0, err
			}
			v, err := strconv.Atoi(string(raw))
			if err != nil {
				return 0, err
			}
			n += v
		}
		return n, nil
	}
	f, err := New(sum, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Get() != 3 || f.Loads() != 1 || f.Err() != nil || reads != 1 {
		t.Fatalf("after New: value %d, loads %d, err %v, reads %d; want 3, 1, nil, 1", f.Get(), f.Loads(), f.Err(), reads)
	}
	write(b, "5", t0.Add(time.Second))
	if got := f.Get(); got != 6 || f.Loads() != 2 {
		t.Fatalf("after a change of b: value %d, loads %d; want 6, 2", got, f.Loads())
	}
	// A half-written change: the value in use stays, Err says why, and
	// uses do not read it again until a file changes.
	write(a, "x", t0.Add(2*time.Second))
	var bad *strconv.NumError
	if got := f.Get(); got != 6 || !errors.As(f.Err(), &bad) {
		t.Fatalf("after a bad change: value %d, err %v; want 6 and the parse error", got, f.Err())
	}
	n := reads
	f.Get()
	f.Get()
	if reads != n {
		t.Fatalf("a failed change was read again %d times without a further change", reads-n)
	}
	write(a, "4", t0.Add(3*time.Second))
	if got := f.Get(); got != 9 || f.Err() != nil || f.Loads() != 3 {
		t.Fatalf("after the fix: value %d, err %v, loads %d; want 9, nil, 3", got, f.Err(), f.Loads())
	}
	if prevs[0] != 0 || prevs[len(prevs)-1] != 6 {
		t.Fatalf("values given to read: %v; want 0 first and 6 (the value in use) last", prevs)
	}
	// A file gone (being replaced): the value in use stays.
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	if got := f.Get(); got != 9 || f.Err() != nil {
		t.Fatalf("with b gone: value %d, err %v; want 9, nil", got, f.Err())
	}
	if _, err := New(sum, a, b); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New with a missing file: %v, want ErrNotExist", err)
	}
	refuse := errors.New("refused")
	if _, err := New(func(int) (int, error) { return 0, refuse }, a); !errors.Is(err, refuse) {
		t.Fatalf("New with a failing read: %v, want read's error", err)
	}
}
