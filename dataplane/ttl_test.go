package dataplane_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// TestTTLDecremented: the XDP program forwards a redirected packet (and a
// target's reply) one hop down, TTL or hop limit one less with the IPv4
// header checksum fixed, as a router; a packet it would forward with 1
// left is not forwarded, counted as ttl_exceeded, and answered as a router
// answers it: an ICMP time exceeded (ICMPv6 type 3) back to its sender,
// from the address it was sent to, quoting its IP header and 8 bytes
// (issue 15 item 9).
func TestTTLDecremented(t *testing.T) {
	tb := newRedirectTestbed(t)
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
		before := tb.drops(t)
		v, out := tb.xdp(t, in)
		if n := tb.drops(t)["ttl_exceeded"] - before["ttl_exceeded"]; c.wantDrop != (n == 1) || n > 1 {
			t.Fatalf("verdict %d, ttl_exceeded counted %d", v, n)
		}
		if c.wantDrop {
			if v != xdpTX {
				t.Fatalf("verdict %d, want XDP_TX (a time exceeded)", v)
			}
			verifyChecksums(t, out)
			typ, q := uint8(11), 28
			if ap(c.client).Addr().Is6() {
				typ, q = 3, 48
			}
			want := icmpErr(t, ap(c.frontend).Addr(), ap(c.client).Addr(), macD0, macPeer, typ, 0, 0, quote(in, q))
			if !bytes.Equal(out, want) {
				t.Fatalf("time exceeded\n got %x\nwant %x", out, want)
			}
			continue
		}
		if v != xdpTX {
			t.Fatalf("verdict %d, want XDP_TX", v)
		}
		p := verifyChecksums(t, out)
		sport, _ := l4Ports(p)
		snat := snatOf(ap(c.client).Addr())
		want := spec{src: netip.AddrPortFrom(snat, sport), dst: ap(c.target), proto: c.proto, flags: flags, payload: []byte("ttl"), hopLimit: c.ttl - 1, srcMAC: macD0, dstMAC: macGW, seq: 1}
		if w := want.build(t); !bytes.Equal(out, w) {
			t.Fatalf("output\n got %x\nwant %x", out, w)
		}
	}
}

// TestTTLDecrementedTC: the tc program counts the hop of a packet it
// forwards from an ingress hook (a pod's, or XDP's without a neighbour):
// 1 left is counted and answered with a time exceeded out of the
// interface it came in by; a packet the host sends (egress) is no hop of
// ours and keeps its TTL of 1.
func TestTTLDecrementedTC(t *testing.T) {
	tb := newRedirectTestbed(t)
	d0 := tb.d0.Attrs().Index
	run := func(client string, ttl uint8, ingress int) (uint32, []byte, uint64) {
		t.Helper()
		in := spec{src: ap(client), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", payload: []byte("ttl"), hopLimit: ttl, srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		before := tb.drops(t)
		run := tb.d.RunTC
		if ingress != 0 {
			run = func(p []byte) (uint32, []byte, error) { return tb.d.RunTCIngress(p, ingress) }
		}
		v, out, err := run(in)
		if err != nil {
			t.Fatal(err)
		}
		return v, out, tb.drops(t)["ttl_exceeded"] - before["ttl_exceeded"]
	}
	v, out, n := run("198.51.100.7:33000", 1, d0)
	if v != tcRedirect || n != 1 {
		t.Fatalf("ingress, TTL 1: verdict %d, ttl_exceeded counted %d; want redirect (a time exceeded), 1", v, n)
	}
	in := spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", payload: []byte("ttl"), hopLimit: 1, srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
	if want := icmpErr(t, ap("10.0.0.1:80").Addr(), ap("198.51.100.7:33000").Addr(), macD0, macPeer, 11, 0, 0, quote(in, 28)); !bytes.Equal(out, want) {
		t.Fatalf("ingress, TTL 1: time exceeded\n got %x\nwant %x", out, want)
	}
	v, out, n = run("198.51.100.7:33001", 2, d0)
	if v != tcRedirect || n != 0 || out[14+8] != 1 {
		t.Fatalf("ingress, TTL 2: verdict %d, TTL %d, ttl_exceeded counted %d; want redirect, 1, 0", v, out[14+8], n)
	}
	verifyChecksums(t, out)
	v, out, n = run("198.51.100.7:33002", 1, 0)
	if v != tcRedirect || n != 0 || out[14+8] != 1 {
		t.Fatalf("host egress, TTL 1: verdict %d, TTL %d, ttl_exceeded counted %d; want redirect, 1, 0", v, out[14+8], n)
	}
}

// TestTimeExceededBudget: time exceeded answers are bounded as a router
// bounds them (bpf/consts.h ICMP_RATE a second, bursts of ICMP_BURST, per
// CPU): a burst of expired packets from one CPU gets the burst answered,
// plus what the budget refilled meanwhile (by the programs' coarse clock);
// the rest are dropped without an
// answer and counted as icmp_limited (each still as ttl_exceeded).
func TestTimeExceededBudget(t *testing.T) {
	tb := newRedirectTestbed(t)
	d0 := tb.d0.Attrs().Index
	answered, delta := tb.runICMPBudget(t, "expired packets", d0, func(i int) []byte {
		return spec{src: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), uint16(20000+i)), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("x"), hopLimit: 1, srcMAC: macPeer, dstMAC: macD0}.build(t)
	})
	ttl, limited := delta["ttl_exceeded"], delta["icmp_limited"]
	if ttl != icmpSent || limited != uint64(icmpSent-answered) {
		t.Fatalf("ttl_exceeded %d, icmp_limited %d; want %d, %d", ttl, limited, icmpSent, icmpSent-answered)
	}
}

// One CPU's ICMP budget (bpf/consts.h ICMP_RATE a second, bursts of
// ICMP_BURST), and how many packets runICMPBudget sends at it.
const icmpRate, icmpBurst, icmpSent = 1000, 50, 400

// runICMPBudget keeps this thread (locked by the testbed's namespace) on
// one CPU and runs icmpSent packets, frame(i), through XDP at ifindex
// d0; each must be answered (XDP_TX) or dropped. The answers must be the
// burst plus what the budget refilled meanwhile, by the programs' coarse
// clock, no more. It returns how many were answered and how much each
// drop counter grew.
func (tb *testbed) runICMPBudget(t *testing.T, what string, d0 int, frame func(i int) []byte) (int, map[string]uint64) {
	t.Helper()
	pinCPU(t)
	before := tb.drops(t)
	answered := 0
	start := time.Now()
	for i := range icmpSent {
		switch v, _ := tb.run(t, frame(i), d0); v {
		case xdpTX:
			answered++
		case xdpDrop:
		default:
			t.Fatalf("%s %d: verdict %d", what, i, v)
		}
	}
	elapsed := time.Since(start)
	delta := tb.dropsSince(t, before)
	// The programs' clock is coarse (a tick, at most 10 ms): it may move one tick more than elapsed.
	most := icmpBurst + int((elapsed+10*time.Millisecond).Seconds()*icmpRate) + 1
	t.Logf("%d %s in %v: %d answered (at most %d), %d limited", icmpSent, what, elapsed, answered, most, delta["icmp_limited"])
	if answered < icmpBurst || answered > most {
		t.Fatalf("%s: %d answered, want %d to %d", what, answered, icmpBurst, most)
	}
	return answered, delta
}
