package dataplane_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// gather reads a collector into name{labels} -> value.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return got
}

func wantMetrics(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if v, ok := got[k]; !ok || v != w {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, w)
		}
	}
}

func sortedClients(t *testing.T, d *dataplane.Dataplane) (ct, nat []string) {
	t.Helper()
	c, n, err := d.FlowClients()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range c {
		ct = append(ct, a.String())
	}
	for _, a := range n {
		nat = append(nat, a.String())
	}
	slices.Sort(ct)
	slices.Sort(nat)
	return ct, nat
}

// TestGC: flows of every kind are put in the real maps by the XDP program
// (BPF_PROG_TEST_RUN), some aged past their timeout; GC removes exactly
// the expired ones, by the programs' rule (idle in both directions: a
// redirected flow whose replies still come stays), in bounded passes, and
// the collector says how many went and how full each map is.
func TestGC(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999, IdleTimeout: 30 * time.Second})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	tb.stage(t, "10.0.0.2:80/tcp", "local")
	type flow struct {
		client  string
		front   string
		proto   lb.Proto
		fwd     time.Duration // aged by, forward direction
		rev     time.Duration // and reply direction
		expired bool
	}
	flows := []flow{
		{"198.51.100.1:33001", "10.0.0.1:80", lb.TCP, 10 * time.Second, 10 * time.Second, true},   // embryonic (SYN 5 s), idle both ways
		{"198.51.100.2:33002", "10.0.0.1:80", lb.TCP, 0, 0, false},                                // fresh
		{"198.51.100.3:33003", "10.0.0.1:80", lb.TCP, 10 * time.Second, 0, true},                  // embryonic: the client's silence alone counts (a target's SYN-ACKs do not keep it)
		{"198.51.100.4:33004", "10.0.0.1:80", lb.TCP, 4 * time.Second, 4 * time.Second, false},    // within its timeout
		{"198.51.100.5:33005", "10.0.0.1:7000", lb.UDP, 40 * time.Second, 40 * time.Second, true}, // UDP past IdleTimeout
		{"198.51.100.6:33006", "10.0.0.1:7000", lb.UDP, 40 * time.Second, 20 * time.Second, false},
		{"198.51.100.7:33007", "10.0.0.2:80", lb.TCP, 10 * time.Second, 0, true}, // local, embryonic
		{"198.51.100.8:33008", "10.0.0.2:80", lb.TCP, 0, 0, false},
		{"198.51.100.9:33009", "10.0.0.1:80", lb.TCP, 10 * time.Second, 0, false}, // established: quiet forward, replies still come
	}
	var wantCT, wantNAT []string
	for _, f := range flows {
		s := spec{src: ap(f.client), dst: ap(f.front), proto: f.proto, srcMAC: macPeer, dstMAC: macD0}
		if f.proto == lb.TCP {
			s.flags = "S"
		} else {
			s.payload = []byte("x")
		}
		if v, _ := tb.xdp(t, s.build(t)); v != xdpTX && v != xdpPass {
			t.Fatalf("%s: verdict %d", f.client, v)
		}
		if f.client == "198.51.100.9:33009" {
			// The handshake: the target's SYN-ACK to the flow's SNAT source, the client's ACK.
			snat := flowSNAT(t, tb.d, ap(f.front), lb.TCP, ap(f.client))
			sa := spec{src: ap("10.2.0.1:8080"), dst: snat, proto: lb.TCP, flags: "SA", srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1}.build(t)
			ack := spec{src: ap(f.client), dst: ap(f.front), proto: lb.TCP, flags: "A", srcMAC: macPeer, dstMAC: macD0, seq: 1, ackn: 5001}.build(t)
			for _, pkt := range [][]byte{sa, ack} {
				if v, _ := tb.xdp(t, pkt); v != xdpTX {
					t.Fatalf("%s handshake: verdict %d", f.client, v)
				}
			}
		}
		if err := tb.d.AgeClient(ap(f.client), f.fwd, f.rev); err != nil {
			t.Fatal(err)
		}
		if !f.expired {
			wantCT = append(wantCT, f.client)
			if f.front != "10.0.0.2:80" {
				wantNAT = append(wantNAT, f.client)
			}
		}
	}
	slices.Sort(wantCT)
	slices.Sort(wantNAT)

	// Bounded passes: 2 entries of each map per pass, until both maps were read to the end.
	var total dataplane.GCStats
	for pass := 0; ; pass++ {
		if pass > 10 {
			t.Fatal("GC never reached the end of the maps")
		}
		st, err := tb.d.GC(2)
		if err != nil {
			t.Fatal(err)
		}
		if st.Scanned > 4 {
			t.Fatalf("pass %d scanned %d entries, want at most 2 per map", pass, st.Scanned)
		}
		total.Conntrack += st.Conntrack
		total.NAT += st.NAT
		if st.Wrapped {
			break
		}
	}
	if total.Conntrack != 4 || total.NAT != 3 {
		t.Fatalf("removed %d conntrack and %d NAT entries, want 4 and 3", total.Conntrack, total.NAT)
	}
	ct, nat := sortedClients(t, tb.d)
	if !slices.Equal(ct, wantCT) || !slices.Equal(nat, wantNAT) {
		t.Fatalf("left: conntrack %v, NAT %v; want %v, %v", ct, nat, wantCT, wantNAT)
	}
	// A second full pass finds nothing more.
	if st, err := tb.d.GC(0); err != nil || st.Conntrack+st.NAT != 0 || !st.Wrapped {
		t.Fatalf("second pass: %+v, %v; want nothing removed", st, err)
	}
	max := float64(dataplane.DefaultMaxFlows)
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_gc_removed_total{map=conntrack}":          4,
		"roam_dataplane_gc_removed_total{map=nat}":                3,
		"roam_dataplane_conntrack_entries{map=conntrack}":         5,
		"roam_dataplane_conntrack_entries{map=nat}":               4,
		"roam_dataplane_map_max_entries{map=conntrack}":           max,
		"roam_dataplane_map_pressure{map=conntrack}":              5 / max,
		"roam_dataplane_map_pressure{map=nat}":                    4 / max,
		"roam_dataplane_map_insert_failures_total{map=conntrack}": 0,
		"roam_dataplane_map_insert_failures_total{map=nat}":       0,
	})
	// The flows kept still work: the quiet-forward one's next packet goes to its target.
	in := spec{src: ap("198.51.100.9:33009"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", srcMAC: macPeer, dstMAC: macD0, seq: 1, ackn: 5001}.build(t)
	if v, _ := tb.xdp(t, in); v != xdpTX {
		t.Fatalf("kept flow: verdict %d, want XDP_TX", v)
	}
}

// TestGCFull: the SNAT range is full of flows: a new flow's insert fails
// and is counted; once the flows expire, GC frees their entries and the
// new flow gets through.
func TestGCFull(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40001, IdleTimeout: 30 * time.Second})
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	udp := func(client string) []byte {
		return spec{src: ap(client), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	for _, c := range []string{"198.51.100.1:1000", "198.51.100.2:1000"} {
		if v, _ := tb.xdp(t, udp(c)); v != xdpTX {
			t.Fatalf("%s: verdict %d", c, v)
		}
	}
	if v, _ := tb.xdp(t, udp("198.51.100.3:1000")); v != xdpDrop {
		t.Fatalf("third flow with both ports held: verdict %d, want drop", v)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_map_insert_failures_total{map=nat}": 1,
		"roam_dataplane_conntrack_entries{map=nat}":         2,
	})
	for _, c := range []string{"198.51.100.1:1000", "198.51.100.2:1000"} {
		if err := tb.d.AgeClient(ap(c), 40*time.Second, 40*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	st, err := tb.d.GC(0)
	if err != nil || st.Conntrack != 2 || st.NAT != 2 {
		t.Fatalf("GC: %+v, %v; want 2 conntrack and 2 NAT entries removed", st, err)
	}
	if v, _ := tb.xdp(t, udp("198.51.100.3:1000")); v != xdpTX {
		t.Fatalf("third flow after GC: verdict %d, want XDP_TX", v)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_map_insert_failures_total{map=nat}": 1,
		"roam_dataplane_gc_removed_total{map=nat}":          2,
		"roam_dataplane_conntrack_entries{map=nat}":         1,
		"roam_dataplane_map_pressure{map=nat}":              1 / float64(dataplane.DefaultMaxFlows),
	})
}

// flowSNAT is the SNAT source of the client's flow to front.
func flowSNAT(t *testing.T, d *dataplane.Dataplane, front netip.AddrPort, proto lb.Proto, client netip.AddrPort) netip.AddrPort {
	t.Helper()
	fl, err := d.FlowList(lb.Frontend{Addr: front.Addr(), Port: front.Port(), Proto: proto})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fl {
		if f.Client == client {
			return f.SNAT
		}
	}
	t.Fatalf("no flow of %s", client)
	return netip.AddrPort{}
}
