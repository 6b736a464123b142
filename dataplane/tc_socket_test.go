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
	"github.com/roamnet/roam/test/netns"
)

// TestTCHostFlow: a real TCP connection from a host socket to a frontend is
// NATed by the tc program on egress to a server in another namespace, and
// the server's replies are translated back on ingress and delivered to the
// socket; with transmit checksum offload off (receiver verifies full
// checksums) and on (CHECKSUM_PARTIAL).
func TestTCHostFlow(t *testing.T) {
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
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "server saw %s: %s", c.RemoteAddr(), line)
			}()
		}
	}()

	d := openTest(t, dataplane.Config{SNATv4: netip.MustParseAddr("10.2.0.2"), PortMin: 45000, PortMax: 45999})
	if err := d.AttachTC("a0"); err != nil {
		t.Fatal(err)
	}
	f := mustFrontend(t, "10.0.0.1:80/tcp")
	gen, err := d.Stage(f, mustTarget(t, "redirect:10.2.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, gen); err != nil {
		t.Fatal(err)
	}

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
			dr, _ := d.Drops()
			fl, _ := d.FlowList(f)
			var cs []string
			for a := dataplane.Action(0); a < 4; a++ {
				c, _ := d.Counters(f, a)
				cs = append(cs, a.String()+":"+c.String())
			}
			t.Fatalf("tx offload %v: read %q: %v\ndrops %v\nflows %v\ncounters %v", offload, reply, err, dr, fl, cs)
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
