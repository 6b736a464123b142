package dataplane_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestFirstPacketAfterNeighbourFlush: the home has no neighbour entry at
// all (flushed, as after a node's boot or once the garbage collector took
// an entry only roam used). The very first UDP datagram to a redirected
// frontend still reaches the server, and its answer the client, with no
// retry: XDP passes the packet as it came, and the tc program on the same
// interface translates it and sends it with bpf_redirect_neigh, which
// resolves the neighbour. A TCP connection then opens at once too.
func TestFirstPacketAfterNeighbourFlush(t *testing.T) {
	x := newXDPTopology(t, func(c net.Conn) { io.Copy(c, c) })
	pc, err := netns.ListenPacket(x.topo.Abroad, "udp4", fmt.Sprintf("%s:5353", netns.AbroadAddr1))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	netns.ServePackets(pc, func(_ net.Addr, p []byte) []byte { return append([]byte("echo "), p...) })
	fe := lb.Frontend{Addr: netns.HomeAddr, Port: 53, Proto: lb.UDP}
	dptest.SetActive(t, x.d, fe, lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr1, 5353)))

	flushed := 0
	err = netns.Handle(x.topo.Home, func(h *netlink.Handle) error {
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := h.NeighList(0, fam)
			if err != nil {
				return err
			}
			for i := range ns {
				if err := h.NeighDel(&ns[i]); err != nil {
					return fmt.Errorf("delete neighbour %s: %w", ns[i].IP, err)
				}
				flushed++
			}
		}
		return nil
	})
	if err != nil || flushed < 3 {
		t.Fatalf("flush the home's neighbours: %d flushed, %v", flushed, err)
	}

	var c net.Conn
	err = netns.Do(x.topo.Client, func() (err error) {
		c, err = net.Dial("udp4", fmt.Sprintf("%s:53", netns.HomeAddr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second)) // one datagram, no retry
	b := make([]byte, 100)
	n, err := c.Read(b)
	if err != nil || string(b[:n]) != "echo first" {
		dr := dptest.Drops(t, x.d)
		t.Fatalf("the first datagram after a neighbour flush: answer %q, %v\ndrops %v", b[:n], err, dr)
	}
	dr := dptest.Drops(t, x.d)
	if dr["no_neigh"] == 0 {
		t.Fatalf("no neighbour was missing (drops %v): the flush did not take", dr)
	}

	tc, err := netns.Dial(t.Context(), x.topo.Client, "tcp4", fmt.Sprintf("%s:80", netns.HomeAddr))
	if err != nil {
		t.Fatalf("TCP after the flush: %v\n%s", err, dataplaneState(x.d, x.fe))
	}
	tc.Close()
}
