package dataplane_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// pktAddrs reads a frame's IP source and destination and L4 ports.
func pktAddrs(t *testing.T, frame []byte) (src, dst netip.AddrPort) {
	t.Helper()
	p := verifyChecksums(t, frame)
	sp, dp := l4Ports(p)
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		s, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		d, _ := netip.AddrFromSlice(ip.DstIP.To4())
		return netip.AddrPortFrom(s, sp), netip.AddrPortFrom(d, dp)
	}
	ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	s, _ := netip.AddrFromSlice(ip.SrcIP)
	d, _ := netip.AddrFromSlice(ip.DstIP)
	return netip.AddrPortFrom(s, sp), netip.AddrPortFrom(d, dp)
}

// TestSNATPool: with a pool of 4 addresses (IPv4) and 3 (IPv6) and a range
// of 2 ports, a target holds pool x range flows: new flows take every
// (address, port) once, the next one is dropped and counted as
// port_exhausted, and a reply to each pool address is translated back to
// its client (BPF_PROG_TEST_RUN).
func TestSNATPool(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40001, SNATv4Count: 4, SNATv6Count: 3})
	for _, c := range []struct {
		front, target, client string
		first                 netip.Addr
		pool                  int
	}{
		{"10.0.0.1:80/tcp", "10.2.0.1:8080", "198.51.100.%d:%d", snat4, 4},
		{"[2001:db8:1::1]:80/tcp", "[2001:db8:2::1]:8080", "[2001:db8:c::%d]:%d", snat6, 3},
	} {
		fe := tb.stage(t, c.front, "redirect:"+c.target)
		front := netip.AddrPortFrom(fe.Addr, fe.Port)
		target := ap(c.target)
		pool := dataplane.SNATPool(c.first, c.pool)
		slots := c.pool * 2
		seen := map[netip.AddrPort]netip.AddrPort{} // SNAT source -> client
		for i := 0; i < slots; i++ {
			client := ap(fmt.Sprintf(c.client, 10+i, 30000+i))
			v, out := tb.xdp(t, spec{src: client, dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t))
			if v != xdpTX {
				t.Fatalf("%s: SYN %d: verdict %d, want XDP_TX", c.front, i, v)
			}
			src, dst := pktAddrs(t, out)
			if dst != target {
				t.Fatalf("%s: SYN %d went to %s, want %s", c.front, i, dst, target)
			}
			if _, dup := seen[src]; dup {
				t.Fatalf("%s: SNAT source %s given twice", c.front, src)
			}
			if !containsAddr(pool, src.Addr()) || src.Port() < 40000 || src.Port() > 40001 {
				t.Fatalf("%s: SNAT source %s outside the pool %v x 40000-40001", c.front, src, pool)
			}
			seen[src] = client
		}
		// Every pool address was used (slots = pool x range, all taken).
		for _, a := range pool {
			if _, ok := seen[netip.AddrPortFrom(a, 40000)]; !ok {
				t.Fatalf("%s: pool address %s:40000 not used: %v", c.front, a, seen)
			}
		}
		before := tb.drops(t)
		extra := ap(fmt.Sprintf(c.client, 200, 31000))
		if v, _ := tb.xdp(t, spec{src: extra, dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)); v != xdpDrop {
			t.Fatalf("%s: SYN past pool x range: verdict %d, want XDP_DROP", c.front, v)
		}
		if n := tb.dropsSince(t, before)["port_exhausted"]; n != 1 {
			t.Fatalf("%s: port_exhausted counted %d, want 1", c.front, n)
		}
		// Replies to every pool address go back to their clients, from the frontend.
		for snat, client := range seen {
			v, out := tb.xdp(t, spec{src: target, dst: snat, proto: lb.TCP, flags: "SA", srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1001}.build(t))
			if v != xdpTX {
				t.Fatalf("%s: reply to %s: verdict %d, want XDP_TX", c.front, snat, v)
			}
			if src, dst := pktAddrs(t, out); src != front || dst != client {
				t.Fatalf("%s: reply to %s became %s -> %s, want %s -> %s", c.front, snat, src, dst, front, client)
			}
		}
	}
	// Past the pool's end, an address is not ours: the reply goes to the host untouched.
	past := netip.AddrPortFrom(dataplane.SNATPool(snat4, 5)[4], 40000)
	if v, _ := tb.xdp(t, spec{src: ap("10.2.0.1:8080"), dst: past, proto: lb.TCP, flags: "SA", srcMAC: macGW, dstMAC: macD0}.build(t)); v != xdpPass {
		t.Fatalf("reply to %s past the pool: verdict %d, want XDP_PASS", past, v)
	}
	// A frontend on a pool address inside the port range would take replies: refused.
	if _, err := tb.d.Stage(lb.Frontend{Addr: dataplane.SNATPool(snat4, 4)[3], Port: 40001, Proto: lb.TCP}, lb.Redirect(ap("10.2.0.1:8080"))); err == nil {
		t.Fatal("frontend on a pool address inside the SNAT range: staged, want an error")
	}
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

// TestParseSNATPool: the agent's forms of a pool, and the bad ones refused.
func TestParseSNATPool(t *testing.T) {
	for _, c := range []struct {
		in    string
		first string
		count int
	}{
		{"10.0.0.5", "10.0.0.5", 1},
		{"10.0.0.16-10.0.0.31", "10.0.0.16", 16},
		{"10.0.0.16/28", "10.0.0.16", 16},
		{"2001:db8::10-2001:db8::13", "2001:db8::10", 4},
		{"2001:db8::/126", "2001:db8::", 4},
		{"::ffff:10.0.0.1", "10.0.0.1", 1},
	} {
		a, n, err := dataplane.ParseSNATPool(c.in)
		if err != nil || a != netip.MustParseAddr(c.first) || n != c.count {
			t.Errorf("ParseSNATPool(%q) = %s, %d, %v; want %s, %d", c.in, a, n, err, c.first, c.count)
		}
	}
	for _, bad := range []string{"", "10.0.0.5/24", "10.0.0.9-10.0.0.1", "10.0.0.1-2001:db8::1", "10.0.0.0/16",
		"10.0.0.0-10.0.8.0", "255.255.255.255-0.0.0.1", "nonsense", "10.0.0.1-"} {
		if a, n, err := dataplane.ParseSNATPool(bad); err == nil {
			t.Errorf("ParseSNATPool(%q) = %s, %d; want an error", bad, a, n)
		}
	}
	// Open refuses a pool too large, or running past its last 32 bits.
	for _, cfg := range []dataplane.Config{
		{SNATv4: netip.MustParseAddr("10.0.0.1"), SNATv4Count: dataplane.MaxSNATPool + 1},
		{SNATv4: netip.MustParseAddr("255.255.255.250"), SNATv4Count: 8},
		{SNATv6: netip.MustParseAddr("2001:db8::ffff:fffe"), SNATv6Count: 4},
		{SNATv4Count: 2},
	} {
		cfg.PinPath = t.TempDir() // not reached: the check comes first
		if d, err := dataplane.Open(cfg); err == nil {
			d.Close()
			t.Errorf("Open(%+v): no error", cfg)
		}
	}
}

// TestSNATPortsCycle: consecutive flows to one target take every SNAT port
// of the range before any comes back, even when each flow is over (aged
// past its timeouts, so its port may be taken over) before the next one
// starts. A port freed a moment ago may still be a TIME_WAIT 4-tuple at the
// target, which answers a new SYN on it with a bare ACK and costs the
// client a second (RFC 6056 algorithm 4, as connect() chooses ports). A
// hash of the client's side, the earlier choice, gave 64 flows about 40
// distinct ports of 64 (BPF_PROG_TEST_RUN).
func TestSNATPortsCycle(t *testing.T) {
	const ports = 64
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000 + ports - 1})
	for _, c := range []struct{ front, target, client string }{
		{"10.0.0.1:80/tcp", "10.2.0.1:8080", "198.51.100.%d:%d"},
		{"[2001:db8:1::1]:80/tcp", "[2001:db8:2::1]:8080", "[2001:db8:c::%d]:%d"},
	} {
		fe := tb.stage(t, c.front, "redirect:"+c.target)
		front := netip.AddrPortFrom(fe.Addr, fe.Port)
		seen := map[uint16]int{}
		for i := 0; i < ports; i++ {
			client := ap(fmt.Sprintf(c.client, 10+i%200, 20000+i*7))
			v, out := tb.xdp(t, spec{src: client, dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t))
			if v != xdpTX {
				t.Fatalf("%s: SYN %d: verdict %d, want XDP_TX", c.front, i, v)
			}
			src, _ := pktAddrs(t, out)
			if j, dup := seen[src.Port()]; dup {
				t.Fatalf("%s: flow %d got SNAT port %d, already given to flow %d (range of %d ports)", c.front, i, src.Port(), j, ports)
			}
			seen[src.Port()] = i
			// The flow is over before the next starts: its port may be taken over.
			if err := tb.d.AgeFlows(30 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestAgeFlowsAgain: flows aged more than once, by more in all than the
// machine's uptime, end at the clock's start and count as that old: the
// only limit is the uptime against one call's age (TestSNATPortsCycle
// ages its first flows by 64 x 30 s, which failed on a machine up for
// less than 32 minutes). The aged flow's only port is then taken over.
func TestAgeFlowsAgain(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 41000, PortMax: 41000})
	fe := tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	front := netip.AddrPortFrom(fe.Addr, fe.Port)
	syn := func(client string) uint32 {
		v, _ := tb.xdp(t, spec{src: ap(client), dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t))
		return v
	}
	if v := syn("198.51.100.1:20000"); v != xdpTX {
		t.Fatalf("first SYN: verdict %d, want XDP_TX", v)
	}
	if v := syn("198.51.100.2:20000"); v == xdpTX {
		t.Fatal("a second flow got the only port while the first holds it")
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	by := time.Duration(ts.Nano()) * 3 / 5 // twice: more than the uptime
	for i := range 2 {
		if err := tb.d.AgeFlows(by); err != nil {
			t.Fatalf("age %d by %s: %v", i+1, by, err)
		}
	}
	if v := syn("198.51.100.3:20000"); v != xdpTX {
		t.Fatalf("SYN after the only flow aged past its timeout: verdict %d, want XDP_TX (port taken over)", v)
	}
}
