package dataplane_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// tcpHandshake opens a redirected TCP flow through the XDP program (SYN,
// the target's SYN-ACK to the flow's SNAT source, the client's ACK) and
// returns that SNAT source.
func tcpHandshake(t *testing.T, tb *testbed, client, front, target netip.AddrPort) netip.AddrPort {
	t.Helper()
	syn := spec{src: client, dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.xdp(t, syn); v != xdpTX {
		t.Fatalf("%s SYN: verdict %d, want XDP_TX", client, v)
	}
	snat := flowSNAT(t, tb.d, front, lb.TCP, client)
	sa := spec{src: target, dst: snat, proto: lb.TCP, flags: "SA", srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1}.build(t)
	ack := spec{src: client, dst: front, proto: lb.TCP, flags: "A", srcMAC: macPeer, dstMAC: macD0, seq: 1, ackn: 5001}.build(t)
	for _, pkt := range [][]byte{sa, ack} {
		if v, _ := tb.xdp(t, pkt); v != xdpTX {
			t.Fatalf("%s handshake: verdict %d, want XDP_TX", client, v)
		}
	}
	return snat
}

// dstOf is the IPv4 destination address and port of a frame the program sent (checksums verified).
func dstOf(t *testing.T, frame []byte) netip.AddrPort {
	t.Helper()
	p := verifyChecksums(t, frame)
	ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if !ok {
		t.Fatal("output is not IPv4")
	}
	a, _ := netip.AddrFromSlice(ip.DstIP.To4())
	_, port := l4Ports(p)
	return netip.AddrPortFrom(a, port)
}

// TestTableBusyLocalService: a busy local UDP service fills the conntrack
// table with its flows; the redirected TCP flows already there keep their
// entries in both maps and keep being forwarded both ways (an LRU table
// evicted them: their next segment found no flow and was dropped); the
// local flows that found the table full are counted (ct_full) and still
// reach the host.
func TestTableBusyLocalService(t *testing.T) {
	const capacity, tcpFlows, udpFlows = 256, 32, 2048
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999, MaxFlows: capacity})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "10.0.0.2:53/udp", "local")
	front, target := ap("10.0.0.1:80"), ap("10.2.0.1:8080")

	snat := make([]netip.AddrPort, tcpFlows)
	client := func(i int) netip.AddrPort { return ap(fmt.Sprintf("198.51.100.1:%d", 20000+i)) }
	for i := range tcpFlows {
		snat[i] = tcpHandshake(t, tb, client(i), front, target)
	}
	for i := range udpFlows {
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(2 + i/1000)}), uint16(10000+i%1000))
		q := spec{src: c, dst: ap("10.0.0.2:53"), proto: lb.UDP, payload: []byte("q"), srcMAC: macPeer, dstMAC: macD0}.build(t)
		for range 2 { // a query and its retry: each local flow is looked up again, as a busy service's are
			if v, _ := tb.xdp(t, q); v != xdpPass {
				t.Fatalf("local UDP flow %d: verdict %d, want XDP_PASS", i, v)
			}
		}
	}
	for i := range tcpFlows {
		data := spec{src: client(i), dst: front, proto: lb.TCP, flags: "A", payload: []byte("data"), srcMAC: macPeer, dstMAC: macD0, seq: 1, ackn: 5001}.build(t)
		if v, _ := tb.xdp(t, data); v != xdpTX {
			t.Fatalf("redirected flow %d after the local flood: verdict %d, want XDP_TX (evicted?)", i, v)
		}
		reply := spec{src: target, dst: snat[i], proto: lb.TCP, flags: "A", payload: []byte("ok"), srcMAC: macGW, dstMAC: macD0, seq: 5001, ackn: 5}.build(t)
		if v, out := tb.xdp(t, reply); v != xdpTX {
			t.Fatalf("redirected flow %d's reply after the local flood: verdict %d, want XDP_TX (NAT entry evicted?)", i, v)
		} else if got := dstOf(t, out); got != client(i) {
			t.Fatalf("redirected flow %d's reply went to %s, want %s", i, got, client(i))
		}
	}
	m := gather(t, tb.d.Collector())
	entries := m["roam_dataplane_conntrack_entries{map=conntrack}"]
	full := m["roam_dataplane_map_insert_failures_total{map=conntrack}"]
	if entries != capacity {
		t.Errorf("conntrack holds %v entries, want %d (full)", entries, capacity)
	}
	// Every local flow's first packet either got an entry or was counted (its retry too).
	if int(full)+2*(int(entries)-tcpFlows) != 2*udpFlows {
		t.Errorf("%v local flows counted as ct_full with %v entries held, want %d in all", full, entries, udpFlows)
	}
	wantMetrics(t, m, map[string]float64{
		"roam_dataplane_conntrack_entries{map=nat}":         tcpFlows,
		"roam_dataplane_map_pressure{map=conntrack}":        1,
		"roam_dataplane_map_insert_failures_total{map=nat}": 0,
	})
}

// TestTableFull: with both maps full of live redirected flows, a new flow
// is refused and counted (nat_full: the NAT entry comes first), and no
// established flow loses its entries; once some flows expire and GC
// removes them, new flows get in again. The same with preallocated maps
// (Config.PreallocFlows).
func TestTableFull(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) { testTableFull(t, prealloc) })
	}
}

func testTableFull(t *testing.T, prealloc bool) {
	const capacity = 64
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999, MaxFlows: capacity, IdleTimeout: 30 * time.Second, PreallocFlows: prealloc})
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	client := func(i int) netip.AddrPort { return ap(fmt.Sprintf("198.51.100.1:%d", 20000+i)) }
	udp := func(c netip.AddrPort) []byte {
		return spec{src: c, dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	for i := range capacity {
		if v, _ := tb.xdp(t, udp(client(i))); v != xdpTX {
			t.Fatalf("flow %d: verdict %d, want XDP_TX", i, v)
		}
	}
	for i := capacity; i < capacity+8; i++ {
		if v, _ := tb.xdp(t, udp(client(i))); v != xdpDrop {
			t.Fatalf("flow %d with both maps full: verdict %d, want XDP_DROP", i, v)
		}
	}
	drops, err := tb.d.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops["nat_full"] != 8 || drops["port_exhausted"] != 0 {
		t.Errorf("drops nat_full %d, port_exhausted %d; want 8 and 0", drops["nat_full"], drops["port_exhausted"])
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_conntrack_entries{map=conntrack}":   capacity,
		"roam_dataplane_conntrack_entries{map=nat}":         capacity,
		"roam_dataplane_map_insert_failures_total{map=nat}": 8,
	})
	// Refused flows make GC hurry; with nothing refused since and no sweep yet, it does not.
	if !tb.d.GCHurry() {
		t.Error("GC does not hurry after refused flows")
	}
	if tb.d.GCHurry() {
		t.Error("GC hurries with nothing refused since and no sweep done")
	}
	// No established flow was given up for the new ones.
	ct, nat := sortedClients(t, tb.d)
	if len(ct) != capacity || len(nat) != capacity {
		t.Fatalf("left %d conntrack and %d NAT entries, want %d each", len(ct), len(nat), capacity)
	}
	for i := range capacity {
		if v, _ := tb.xdp(t, udp(client(i))); v != xdpTX {
			t.Fatalf("established flow %d with the table full: verdict %d, want XDP_TX", i, v)
		}
	}
	// Passes of one entry per map cross the whole tables: 64 entries in 64
	// buckets share buckets, and a batch holds whole buckets.
	for pass := 0; ; pass++ {
		st, err := tb.d.GC(1)
		if err != nil {
			t.Fatalf("GC pass %d of one entry: %v", pass, err)
		}
		if st.Conntrack+st.NAT != 0 {
			t.Fatalf("GC pass %d removed live flows: %+v", pass, st)
		}
		if st.Wrapped {
			break
		}
		if pass > 2*capacity {
			t.Fatal("GC passes of one entry never reached the end of the maps")
		}
	}
	// Some flows end; GC frees their entries; new flows get them.
	for i := range 8 {
		if err := tb.d.AgeClient(client(i), 40*time.Second, 40*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// The passes above left each map's cursor midway: the first pass ends
	// the sweep under way, the second is a whole one.
	var removed dataplane.GCStats
	for range 2 {
		st, err := tb.d.GC(0)
		if err != nil || !st.Wrapped {
			t.Fatalf("GC: %+v, %v; want a complete sweep", st, err)
		}
		removed.Conntrack += st.Conntrack
		removed.NAT += st.NAT
	}
	if removed.Conntrack != 8 || removed.NAT != 8 {
		t.Fatalf("GC removed %d conntrack and %d NAT entries, want 8 and 8", removed.Conntrack, removed.NAT)
	}
	// The sweep left 56 of 64 entries: over 3/4 full, GC keeps hurrying.
	if !tb.d.GCHurry() {
		t.Error("GC does not hurry with the maps 7/8 full")
	}
	for i := capacity; i < capacity+8; i++ {
		if v, _ := tb.xdp(t, udp(client(i))); v != xdpTX {
			t.Fatalf("flow %d after GC: verdict %d, want XDP_TX", i, v)
		}
	}
}
