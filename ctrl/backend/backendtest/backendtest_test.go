package backendtest

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

func TestMemory(t *testing.T) {
	ctx := context.Background()
	m := &Memory{Addr: netip.MustParseAddr("10.0.0.7")}
	web := backend.Spec{Name: "web", Demo: true, Epoch: 1,
		Ports: []backend.Port{{Port: 80, Protocol: lb.TCP}, {Port: 53, Protocol: lb.UDP}}}
	in, err := m.Deploy(ctx, web)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.7:80"), netip.MustParseAddrPort("10.0.0.7:53")}
	if !in.Ready || in.Epoch != 1 || len(in.Endpoints) != 2 || in.Endpoints[0] != want[0] || in.Endpoints[1] != want[1] {
		t.Fatalf("deploy: %+v, want ready, epoch 1, endpoints %v", in, want)
	}
	// The same workload with a new fence is relabelled; another is refused.
	web.Epoch = 2
	if in, err := m.Deploy(ctx, web); err != nil || in.Epoch != 2 {
		t.Fatalf("redeploy with a new epoch: %+v, %v", in, err)
	}
	other := web
	other.Demo, other.Command = false, []string{"sleep", "1"}
	if _, err := m.Deploy(ctx, other); err == nil {
		t.Fatal("deploy of another workload under a running name: no error")
	}
	if s, ok := m.Running("web"); !ok || s.Epoch != 2 {
		t.Fatalf("running: %+v %v, want epoch 2", s, ok)
	}
	if _, err := m.Deploy(ctx, backend.Spec{Name: "api", Ports: web.Ports}); err != nil {
		t.Fatal(err)
	}
	ls, err := m.List(ctx)
	if err != nil || len(ls) != 2 || ls[0].Name != "api" || ls[1].Name != "web" {
		t.Fatalf("list: %+v, %v, want api and web by name", ls, err)
	}
	if err := m.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "web"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
	if err := m.Delete(ctx, "web"); err != nil {
		t.Fatalf("delete of a missing copy: %v", err)
	}
	if in, err := (&Memory{}).Deploy(ctx, web); err != nil || in.Endpoints[0].Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("zero Memory: %+v, %v, want endpoints on 127.0.0.1", in, err)
	}
}
