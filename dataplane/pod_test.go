package dataplane_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/test/netns"
)

// TestLocalPodClient: a client in a local pod, behind a veth whose pod end
// runs neither XDP nor GRO (as on Kubernetes), talks to a redirected
// frontend. Its packets go out through tc on the pod's veth; the target's
// replies arrive on the uplink, where XDP must not redirect them into the
// pod's veth (the veth would drop them): XDP passes them to tc, which
// hands them to the pod's end with bpf_redirect_peer.
func TestLocalPodClient(t *testing.T) {
	x := newXDPTopology(t, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "server saw %s: %s", c.RemoteAddr(), line)
	})
	pod := "roam-p-" + x.topo.Suffix
	if err := netns.Create(pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(pod); err != nil {
			t.Errorf("remove %s: %v", pod, err)
		}
	})
	podAddr, gw := netip.MustParseAddr("10.10.3.2"), netip.MustParseAddr("10.10.3.1")
	if err := netns.Veth(netns.End{NS: x.topo.Home, Name: "p0", Addrs: []netip.Prefix{netip.PrefixFrom(gw, 24)}},
		netns.End{NS: pod, Name: "eth0", Addrs: []netip.Prefix{netip.PrefixFrom(podAddr, 24)}}); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(pod, func() error { return netns.SetGRO("eth0", false) }); err != nil {
		t.Fatal(err)
	}
	var podMAC net.HardwareAddr
	err := netns.Handle(pod, func(h *netlink.Handle) error {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		podMAC = l.Attrs().HardwareAddr
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()})
	})
	if err != nil {
		t.Fatalf("pod route: %v", err)
	}
	err = netns.Handle(x.topo.Home, func(h *netlink.Handle) error {
		l, err := h.LinkByName("p0")
		if err != nil {
			return err
		}
		// A neighbour entry, so the replies take the pod path (not the no-neighbour one).
		return h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: podAddr.AsSlice(), HardwareAddr: podMAC})
	})
	if err != nil {
		t.Fatalf("home neighbour for the pod: %v", err)
	}
	if err := netns.Do(x.topo.Home, func() error { return x.d.AttachTC("p0") }); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := netns.Dial(ctx, pod, "tcp4", fmt.Sprintf("%s:80", netns.HomeAddr))
		cancel()
		if err != nil {
			t.Fatalf("connection %d from the pod: %v\n%s", i, err, dataplaneState(x.d, x.fe))
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hello %d\n", i)
		reply, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if want := fmt.Sprintf(": hello %d\n", i); err != nil || len(reply) < len(want) || reply[len(reply)-len(want):] != want {
			t.Fatalf("connection %d from the pod: reply %q, %v\n%s", i, reply, err, dataplaneState(x.d, x.fe))
		}
	}
	dr := dptest.Drops(t, x.d)
	if dr["to_pod"] == 0 {
		t.Fatalf("no reply took the pod path: %v", dr)
	}
}
