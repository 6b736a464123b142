package dataplane_test

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestTCRedirectFailedCounted: a redirect the kernel cannot carry out
// after the tc program returned is counted as redirect_failed, as XDP's
// are. A new flow enters tc at d0's ingress (a live frame, sent into d0's
// peer) for a frontend whose target sits behind a local pod's veth, p0:
// tc hands it to the pod's end with bpf_redirect_peer. That end in this
// namespace (not a pod's) and later down: skb_do_redirect drops the
// packet, counted; in the pod's own namespace and up: delivered, not
// counted.
func TestTCRedirectFailedCounted(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	p0 := addVeth(t, tb.h, "p0", "02:00:00:00:00:03", "10.6.0.1/24")
	addNeigh(t, tb.h, p0, "10.6.0.2", macGW)
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.6.0.2:8080")
	for _, ifc := range []string{"d0", "p0"} {
		if err := tb.d.AttachTC(ifc); err != nil {
			t.Fatal(err)
		}
	}
	peer, err := tb.h.LinkByName("d0p")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0) // send only
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sport := uint16(33000)
	send := func() uint64 {
		t.Helper()
		before := tb.drops(t)["redirect_failed"]
		sport++
		in := spec{src: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), sport), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		if err := unix.Sendto(fd, in, 0, &unix.SockaddrLinklayer{Ifindex: peer.Attrs().Index}); err != nil {
			t.Fatal(err)
		}
		return tb.drops(t)["redirect_failed"] - before
	}
	if n := send(); n != 1 {
		t.Fatalf("redirect_peer to a pod's veth whose end is in this namespace: redirect_failed +%d, want 1", n)
	}

	pod := "roam-tcr-" + netns.RandSuffix(4)
	if err := netns.Create(pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(pod); err != nil {
			t.Errorf("remove %s: %v", pod, err)
		}
	})
	end, err := tb.h.LinkByName("p0p")
	if err != nil {
		t.Fatal(err)
	}
	podNS, err := vnetns.GetFromName(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	if err := tb.h.LinkSetNsFd(end, int(podNS)); err != nil {
		t.Fatalf("move p0p into %s: %v", pod, err)
	}
	setUp := func(up bool) {
		t.Helper()
		err := netns.Handle(pod, func(h *netlink.Handle) error {
			l, err := h.LinkByName("p0p")
			if err != nil {
				return err
			}
			if up {
				return h.LinkSetUp(l)
			}
			return h.LinkSetDown(l)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	setUp(true)
	rx := func() uint64 {
		t.Helper()
		var n uint64
		err := netns.Handle(pod, func(h *netlink.Handle) error {
			l, err := h.LinkByName("p0p")
			if err == nil {
				n = l.Attrs().Statistics.RxPackets
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	rx0 := rx()
	if n := send(); n != 0 {
		t.Fatalf("redirect_peer to a pod's end, up in its namespace: redirect_failed +%d, want 0", n)
	}
	if got := rx() - rx0; got != 1 {
		t.Fatalf("redirect_peer to a pod's end, up in its namespace: it received %d packets, want 1", got)
	}
	setUp(false)
	if n := send(); n != 1 {
		t.Fatalf("redirect_peer to a pod's end that is down: redirect_failed +%d, want 1", n)
	}
}
