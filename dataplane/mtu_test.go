package dataplane_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// xdpTopology is the client-home-abroad topology (test/netns) with roam's
// XDP and tc programs on the home's two interfaces, and a frontend on the
// home's client-side address redirected to a server abroad.
type xdpTopology struct {
	topo *netns.Topology
	d    *dataplane.Dataplane
	fe   lb.Frontend
}

// serverPort is where the abroad server of xdpTopology listens.
const serverPort = 8080

func newXDPTopology(t *testing.T, serve func(net.Conn)) *xdpTopology {
	t.Helper()
	topo := netns.NewTestTopology(t)
	d := dptest.New(t, dataplane.Config{SNATv4: netns.HomeWAN, PortMin: 40000, PortMax: 40999})
	err := netns.Do(topo.Home, func() error {
		for _, ifc := range []string{"h0", "h1"} {
			if err := d.AttachXDP(ifc, dataplane.XDPNative); err != nil {
				return err
			}
			if err := d.AttachTC(ifc); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := netns.Listen(topo.Abroad, "tcp4", fmt.Sprintf("%s:%d", netns.AbroadAddr1, serverPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	netns.Serve(ln, serve)
	fe := lb.Frontend{Addr: netns.HomeAddr, Port: 80, Proto: lb.TCP}
	dptest.SetActive(t, d, fe, lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr1, serverPort)))
	return &xdpTopology{topo: topo, d: d, fe: fe}
}

// setMTU sets an interface's MTU in a namespace.
func setMTU(t *testing.T, ns, dev string, mtu int) {
	t.Helper()
	err := netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return err
		}
		return h.LinkSetMTU(l, mtu)
	})
	if err != nil {
		t.Fatalf("set %s mtu %d: %v", dev, mtu, err)
	}
}

// dataplaneState describes d for a failure message: its drop counters,
// and f's flows and counters by action.
func dataplaneState(d *dataplane.Dataplane, f lb.Frontend) string {
	dr, _ := d.Drops()
	fl, _ := d.FlowList(f)
	var cs []string
	for a := dataplane.ActionPass; a <= dataplane.ActionDrop; a++ {
		c, _ := d.Counters(f, a)
		cs = append(cs, a.String()+":"+c.String())
	}
	return fmt.Sprintf("drops %v\nflows %v\ncounters %v", dr, fl, cs)
}

// bulkServer answers "get N\n" with N bytes, and "put\n" followed by bytes
// until the client's FIN with their count.
func bulkServer(c net.Conn) {
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	if n, ok := strings.CutPrefix(strings.TrimSpace(line), "get "); ok {
		var size int64
		fmt.Sscan(n, &size)
		io.CopyN(c, zeros{}, size)
		return
	}
	n, err := io.Copy(io.Discard, r)
	fmt.Fprintf(c, "%d %v\n", n, err)
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// TestPathMTU: the home's client-side interface has MTU 1400 while the
// client and the server have 1500, so both would send segments too big for
// that hop. A 100 MB upload completes because the program clamps the MSS
// the server announces in its SYN-ACK to what the client's hop carries
// (the veth drops a client frame larger than the home's MTU before any
// program sees it); then a 100 MB download completes because the XDP
// program answers the server's oversize packets with an ICMP
// "fragmentation needed" carrying the MTU (the server lowers its path MTU).
func TestPathMTU(t *testing.T) {
	const size = 100 << 20
	x := newXDPTopology(t, bulkServer)
	setMTU(t, x.topo.Home, "h0", 1400)
	front := fmt.Sprintf("%s:80", netns.HomeAddr)
	dial := func() net.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := netns.Dial(ctx, x.topo.Client, "tcp4", front)
		if err != nil {
			t.Fatalf("dial %s: %v\n%s", front, err, dataplaneState(x.d, x.fe))
		}
		c.SetDeadline(time.Now().Add(60 * time.Second))
		return c
	}

	c := dial()
	fmt.Fprintf(c, "put\n")
	chunk := make([]byte, 1<<20)
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			c.Close()
			t.Fatalf("upload over an MTU 1400 hop: write after %d bytes: %v\n%s", sent, err, dataplaneState(x.d, x.fe))
		}
	}
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	c.Close()
	if want := fmt.Sprintf("%d <nil>\n", size); string(reply) != want {
		t.Fatalf("upload over an MTU 1400 hop: server answered %q, %v; want %q\n%s", reply, err, want, dataplaneState(x.d, x.fe))
	}

	c = dial()
	fmt.Fprintf(c, "get %d\n", size)
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if n != size {
		t.Fatalf("download over an MTU 1400 hop: %d of %d bytes: %v\n%s", n, size, err, dataplaneState(x.d, x.fe))
	}
	dr := dptest.Drops(t, x.d)
	if dr["too_big"] == 0 {
		t.Fatalf("download completed without an ICMP too-big from the program: %v", dr)
	}
	t.Logf("download: %d bytes; %d packets answered with ICMP fragmentation needed", n, dr["too_big"])

}
