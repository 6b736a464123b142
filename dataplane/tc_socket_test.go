package dataplane_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// tcHost is a host namespace whose socket reaches a frontend redirected,
// by the tc program on a0, to a server in another namespace (10.2.0.1:8080).
type tcHost struct {
	d      *dataplane.Dataplane
	h      *netlink.Handle // the host's namespace
	hs     *netlink.Handle // the server's
	f      lb.Frontend
	a0     netlink.Link
	server vnetns.NsHandle
}

// newTCHost builds the two namespaces (the calling thread stays in the
// host's), starts serve on each connection the server accepts, and
// attaches and programs the data plane.
func newTCHost(t *testing.T, serve func(net.Conn)) *tcHost {
	h := netns.Enter(t)
	home, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { home.Close() })
	server, err := vnetns.New() // switches this (locked) thread
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	if err := vnetns.Set(home); err != nil {
		t.Fatal(err)
	}
	hs, err := netlink.NewHandleAt(server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hs.Close)

	a0 := addVeth(t, h, "a0", "02:00:00:00:20:01", "10.2.0.2/24")
	peer, err := h.LinkByName("a0p")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNsFd(peer, int(server)); err != nil {
		t.Fatal(err)
	}
	peer, err = hs.LinkByName("a0p")
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{10, 2, 0, 1}, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := hs.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: a0.Attrs().Index, Dst: &net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.CIDRMask(24, 32)}, Gw: net.IP{10, 2, 0, 1}}); err != nil {
		t.Fatal(err)
	}

	// The server listens inside its namespace (the socket stays there).
	if err := vnetns.Set(server); err != nil {
		t.Fatal(err)
	}
	ln, lerr := net.Listen("tcp4", "10.2.0.1:8080")
	if err := vnetns.Set(home); err != nil {
		t.Fatal(err)
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { ln.Close() })
	netns.Serve(ln, serve)

	d := openTest(t, dataplane.Config{SNATv4: netip.MustParseAddr("10.2.0.2"), PortMin: 45000, PortMax: 45999})
	if err := d.AttachTC("a0"); err != nil {
		t.Fatal(err)
	}
	f := mustFrontend(t, "10.0.0.1:80/tcp")
	dptest.SetActive(t, d, f, mustTarget(t, "redirect:10.2.0.1:8080"))
	return &tcHost{d: d, h: h, hs: hs, f: f, a0: a0, server: server}
}

// TestTCHostFlow: a real TCP connection from a host socket to a frontend is
// NATed by the tc program on egress to a server in another namespace, and
// the server's replies are translated back on ingress and delivered to the
// socket; with transmit checksum offload off (receiver verifies full
// checksums) and on (CHECKSUM_PARTIAL).
func TestTCHostFlow(t *testing.T) {
	b := newTCHost(t, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "server saw %s: %s", c.RemoteAddr(), line)
	})
	d, f := b.d, b.f

	for _, offload := range []bool{false, true} {
		if err := netns.SetTxChecksum("a0", offload); err != nil {
			t.Fatal(err)
		}
		conn, err := net.DialTimeout("tcp4", "10.0.0.1:80", 20*time.Second)
		if err != nil {
			t.Fatalf("tx offload %v: dial the frontend: %v", offload, err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if got := conn.RemoteAddr().String(); got != "10.0.0.1:80" {
			t.Fatalf("connected to %s", got)
		}
		fmt.Fprintf(conn, "hello %v\n", offload)
		reply, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("tx offload %v: read %q: %v\n%s", offload, reply, err, dataplaneState(b.d, b.f))
		}
		// The server sees the SNAT address and a port from the range.
		want := fmt.Sprintf(": hello %v\n", offload)
		if !strings.HasPrefix(string(reply), "server saw 10.2.0.2:45") || !strings.HasSuffix(string(reply), want) {
			t.Fatalf("tx offload %v: reply %q", offload, reply)
		}
	}
	c, err := d.Counters(f, dataplane.ActionReverse)
	if err != nil || c.Packets == 0 {
		t.Fatalf("reverse counter %v, %v", c, err)
	}
}

// TestTCBulkUpload: a host socket uploads 100 MB to a redirected frontend
// through tc. With segmentation offload (the default on veth) the stack
// hands tc super-packets of up to 64 KB; the program must let the kernel
// judge them against the MTU (they are segmented after tc), not drop them
// as too big. Both with TSO (checksum offload on) and with software GSO
// only (checksum offload off).
func TestTCBulkUpload(t *testing.T) {
	const size = 100 << 20
	b := newTCHost(t, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d %v\n", n, err)
	})
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	for _, offload := range []bool{true, false} {
		if err := netns.SetTxChecksum("a0", offload); err != nil {
			t.Fatal(err)
		}
		before, _ := b.d.Counters(b.f, dataplane.ActionRedirect)
		conn, err := net.DialTimeout("tcp4", "10.0.0.1:80", 20*time.Second)
		if err != nil {
			t.Fatalf("tx offload %v: dial the frontend: %v", offload, err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := conn.Write(chunk); err != nil {
				conn.Close()
				t.Fatalf("tx offload %v: write after %d bytes: %v\n%s", offload, sent, err, dataplaneState(b.d, b.f))
			}
		}
		conn.(*net.TCPConn).CloseWrite()
		reply, err := io.ReadAll(conn)
		conn.Close()
		if want := fmt.Sprintf("%d <nil>\n", size); err != nil || string(reply) != want {
			t.Fatalf("tx offload %v: server answered %q, %v; want %q\n%s", offload, reply, err, want, dataplaneState(b.d, b.f))
		}
		after, _ := b.d.Counters(b.f, dataplane.ActionRedirect)
		pkts, bytes := after.Packets-before.Packets, after.Bytes-before.Bytes
		t.Logf("tx offload %v: %d bytes uploaded in %d packets through tc (%d bytes per packet)", offload, size, pkts, bytes/max(pkts, 1))
	}
	if dr := dptest.Drops(t, b.d); dr["no_route"] != 0 {
		t.Fatalf("no_route drops %d", dr["no_route"])
	}
}
