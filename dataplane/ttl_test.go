package dataplane_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestTTLDecremented: the XDP program forwards a redirected packet (and a
// target's reply) one hop down, TTL or hop limit one less with the IPv4
// header checksum fixed, as a router; a packet it would forward with 1
// left is dropped and counted as ttl_exceeded, and makes no output (issue
// 15 item 9).
func TestTTLDecremented(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "[2001:db8::1]:7000/udp", "redirect:[2001:db8:2::1]:7001")
	for _, c := range []struct {
		desc             string
		client, frontend string
		target           string
		proto            lb.Proto
		ttl              uint8
		wantDrop         bool
	}{
		{"ipv4, TTL 2: forwarded with 1", "198.51.100.7:33000", "10.0.0.1:80", "10.2.0.1:8080", lb.TCP, 2, false},
		{"ipv4, TTL 1: dropped", "198.51.100.7:33001", "10.0.0.1:80", "", lb.TCP, 1, true},
		{"ipv6, hop limit 255: forwarded with 254", "[2001:db8:c::7]:5000", "[2001:db8::1]:7000", "[2001:db8:2::1]:7001", lb.UDP, 255, false},
		{"ipv6, hop limit 1: dropped", "[2001:db8:c::7]:5001", "[2001:db8::1]:7000", "", lb.UDP, 1, true},
	} {
		t.Logf("case: %s", c.desc)
		flags := ""
		if c.proto == lb.TCP {
			flags = "S"
		}
		in := spec{src: ap(c.client), dst: ap(c.frontend), proto: c.proto, flags: flags, payload: []byte("ttl"), hopLimit: c.ttl, srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		before := dropsOf(t, tb.d)
		v, out := tb.run(t, in, d0)
		if n := dropsOf(t, tb.d)["ttl_exceeded"] - before["ttl_exceeded"]; c.wantDrop != (n == 1) || n > 1 {
			t.Fatalf("verdict %d, ttl_exceeded counted %d", v, n)
		}
		if c.wantDrop {
			if v != xdpDrop {
				t.Fatalf("verdict %d, want XDP_DROP", v)
			}
			continue
		}
		if v != xdpTX {
			t.Fatalf("verdict %d, want XDP_TX", v)
		}
		p := verifyChecksums(t, out)
		sport, _ := l4Ports(p)
		snat := snat4
		if ap(c.client).Addr().Is6() {
			snat = snat6
		}
		want := spec{src: netip.AddrPortFrom(snat, sport), dst: ap(c.target), proto: c.proto, flags: flags, payload: []byte("ttl"), hopLimit: c.ttl - 1, srcMAC: macD0, dstMAC: macGW, seq: 1}
		if w := want.build(t); !bytes.Equal(out, w) {
			t.Fatalf("output\n got %x\nwant %x", out, w)
		}
	}
}

// TestTTLDecrementedTC: the tc program counts the hop of a packet it
// forwards from an ingress hook (a pod's, or XDP's without a neighbour):
// 1 left is dropped and counted; a packet the host sends (egress) is no
// hop of ours and keeps its TTL of 1.
func TestTTLDecrementedTC(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	run := func(client string, ttl uint8, ingress int) (uint32, []byte, uint64) {
		t.Helper()
		in := spec{src: ap(client), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", payload: []byte("ttl"), hopLimit: ttl, srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		before := dropsOf(t, tb.d)
		run := tb.d.RunTC
		if ingress != 0 {
			run = func(p []byte) (uint32, []byte, error) { return tb.d.RunTCIngress(p, ingress) }
		}
		v, out, err := run(in)
		if err != nil {
			t.Fatal(err)
		}
		return v, out, dropsOf(t, tb.d)["ttl_exceeded"] - before["ttl_exceeded"]
	}
	if v, _, n := run("198.51.100.7:33000", 1, d0); v != tcShot || n != 1 {
		t.Fatalf("ingress, TTL 1: verdict %d, ttl_exceeded counted %d; want TC_ACT_SHOT, 1", v, n)
	}
	v, out, n := run("198.51.100.7:33001", 2, d0)
	if v != tcRedirect || n != 0 || out[14+8] != 1 {
		t.Fatalf("ingress, TTL 2: verdict %d, TTL %d, ttl_exceeded counted %d; want redirect, 1, 0", v, out[14+8], n)
	}
	verifyChecksums(t, out)
	v, out, n = run("198.51.100.7:33002", 1, 0)
	if v != tcRedirect || n != 0 || out[14+8] != 1 {
		t.Fatalf("host egress, TTL 1: verdict %d, TTL %d, ttl_exceeded counted %d; want redirect, 1, 0", v, out[14+8], n)
	}
}
