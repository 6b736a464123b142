// Package backendtest gives tests an orchestrator backend that runs copies
// as entries in a map (as net/http/httptest gives a real server): Deploy
// records the spec and the copy is at once ready, reached at Addr on each
// of its ports. Tests that inject faults or log actions wrap it.
package backendtest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/roamnet/roam/ctrl/backend"
)

// Memory is a backend.Backend holding its copies in memory. The zero value
// is ready to use, its copies reached on 127.0.0.1.
type Memory struct {
	// Addr is where the copies are reached (their endpoints' address);
	// unset: 127.0.0.1. Set it before the first call.
	Addr netip.Addr

	mu     sync.Mutex
	copies map[string]backend.Spec
}

var _ backend.Backend = (*Memory)(nil)

func (m *Memory) inst(s backend.Spec) backend.Instance {
	addr := m.Addr
	if !addr.IsValid() {
		addr = netip.MustParseAddr("127.0.0.1")
	}
	eps := make([]netip.AddrPort, len(s.Ports))
	for i, p := range s.Ports {
		eps[i] = netip.AddrPortFrom(addr, p.Port)
	}
	return backend.Instance{Name: s.Name, Home: s.Home, MigrationID: s.MigrationID, Epoch: s.Epoch, Endpoints: eps, Ready: true}
}

// Deploy records s; a copy of that name running another workload
// (backend.Spec.SameWorkload) is an error, as the Backend contract says.
func (m *Memory) Deploy(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.copies[s.Name]; ok && !cur.SameWorkload(s) {
		return backend.Instance{}, fmt.Errorf("deploy %s: already runs with a different spec", s.Name)
	}
	if m.copies == nil {
		m.copies = map[string]backend.Spec{}
	}
	m.copies[s.Name] = s
	return m.inst(s), nil
}

// Delete forgets the copy; a missing one is not an error.
func (m *Memory) Delete(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.copies, name)
	return nil
}

// Get returns the copy, or an error wrapping backend.ErrNotFound.
func (m *Memory) Get(ctx context.Context, name string) (backend.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.copies[name]
	if !ok {
		return backend.Instance{}, fmt.Errorf("get %s: %w", name, backend.ErrNotFound)
	}
	return m.inst(s), nil
}

// List returns every copy, by name.
func (m *Memory) List(ctx context.Context) ([]backend.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []backend.Instance
	for _, s := range m.copies {
		out = append(out, m.inst(s))
	}
	slices.SortFunc(out, func(x, y backend.Instance) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// Capacity reports nothing: a Memory has no limits.
func (m *Memory) Capacity(ctx context.Context) (backend.Capacity, error) {
	return backend.Capacity{}, nil
}

// Running returns the spec of the copy called name, if one runs.
func (m *Memory) Running(name string) (backend.Spec, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.copies[name]
	return s, ok
}
