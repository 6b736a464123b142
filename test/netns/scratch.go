package netns

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Enter moves the calling goroutine's thread, locked, into a fresh
// anonymous namespace with forwarding on until the test ends, and returns a
// netlink handle in it. What must happen inside (netlink through the
// handle, sysctls, BPF_PROG_TEST_RUN with fib lookups, sockets) must then
// run on the test goroutine. It skips the test when not root.
func Enter(t testing.TB) *netlink.Handle {
	t.Helper()
	SkipUnlessRoot(t)
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	ns, err := vnetns.New() // switches this thread
	if err != nil {
		if serr := vnetns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		defer ns.Close()
		defer orig.Close()
		if err := vnetns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err) // the thread stays locked
			return
		}
		runtime.UnlockOSThread()
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	for _, p := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			t.Fatalf("enable forwarding: %v", err)
		}
	}
	return h
}

// SkipUnlessRoot skips a test that needs root (BPF, namespaces, XDP),
// saying so. CI runs the tests as root, so there they run.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, network namespaces, XDP): run as root, as make test and CI do")
	}
}

// NewTestTopology builds a Topology for t, removed when the test ends; it
// skips the test when not root and fails it if the topology cannot be
// built.
func NewTestTopology(t testing.TB) *Topology {
	t.Helper()
	SkipUnlessRoot(t)
	topo, err := NewTopology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("remove topology: %v", err)
		}
	})
	return topo
}
