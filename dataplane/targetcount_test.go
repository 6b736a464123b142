package dataplane_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestTargetCounters: every packet redirected to a target (XDP and tc)
// and every reply of the target translated back is counted under that
// target, packets and bytes by direction, readable from Go and as
// roam_dataplane_target_{packets,bytes}_total; packets of another
// frontend's target, and a packet dropped before it left (TTL out), are
// not counted under it.
func TestTargetCounters(t *testing.T) {
	tb := newRedirectTestbed(t)
	d0 := tb.d0.Attrs().Index
	client, front := ap("198.51.100.7:33000"), ap("10.0.0.1:80")
	syn := spec{src: client, dst: front, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t)
	snat := tb.openFlow(t, "SYN", syn)
	toBytes, fromBytes := uint64(len(syn)), uint64(0)
	synack := spec{src: ap("10.2.0.1:8080"), dst: snat, proto: lb.TCP, flags: "SA", srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1001}.build(t)
	for range 3 {
		if v, _ := tb.xdp(t, synack); v != xdpTX {
			t.Fatalf("SYN-ACK: verdict %d", v)
		}
		fromBytes += uint64(len(synack))
	}
	data := spec{src: client, dst: front, proto: lb.TCP, flags: "A", payload: []byte("hello, target"), srcMAC: macPeer, dstMAC: macD0, seq: 1001, ackn: 5001}.build(t)
	if v, _, err := tb.d.RunTCIngress(data, d0); err != nil || v != tcRedirect {
		t.Fatalf("data by tc: verdict %d, %v", v, err)
	}
	toBytes += uint64(len(data))
	// TTL out: not forwarded, not the target's.
	expired := spec{src: client, dst: front, proto: lb.TCP, flags: "A", hopLimit: 1, srcMAC: macPeer, dstMAC: macD0, seq: 1001, ackn: 5001}.build(t)
	if v, _ := tb.xdp(t, expired); v != xdpTX {
		t.Fatalf("expired: verdict %d, want the time exceeded", v)
	}
	// Another frontend and target (UDP on IPv6).
	udp := spec{src: ap("[2001:db8:c::7]:5000"), dst: ap("[2001:db8::1]:7000"), proto: lb.UDP, payload: []byte("q"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.xdp(t, udp); v != xdpTX {
		t.Fatalf("udp: verdict %d", v)
	}

	got, err := tb.d.TargetCounters()
	if err != nil {
		t.Fatal(err)
	}
	want := []dataplane.TargetCount{
		{Target: ap("10.2.0.1:8080"), Proto: lb.TCP, ToPackets: 2, ToBytes: toBytes, FromPackets: 3, FromBytes: fromBytes},
		{Target: ap("[2001:db8:2::1]:7001"), Proto: lb.UDP, ToPackets: 1, ToBytes: uint64(len(udp))},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("target counters\n got %+v\nwant %+v", got, want)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_target_packets_total{direction=to,proto=tcp,target=10.2.0.1:8080}":        2,
		"roam_dataplane_target_bytes_total{direction=to,proto=tcp,target=10.2.0.1:8080}":          float64(toBytes),
		"roam_dataplane_target_packets_total{direction=from,proto=tcp,target=10.2.0.1:8080}":      3,
		"roam_dataplane_target_bytes_total{direction=from,proto=tcp,target=10.2.0.1:8080}":        float64(fromBytes),
		"roam_dataplane_target_packets_total{direction=to,proto=udp,target=[2001:db8:2::1]:7001}": 1,
	})
}

// TestRedirectFailedCounted: a redirect the kernel cannot carry out after
// the XDP program returned (into a veth whose peer runs neither XDP nor
// GRO: the frame is dropped) is counted as redirect_failed; one it
// carries out (the same veth once its peer runs XDP) is not.
func TestRedirectFailedCounted(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	d0 := tb.d0.Attrs().Index
	addNeigh(t, tb.h, tb.d1, "203.0.113.254", macGW)
	addRoute(t, tb.h, tb.d1, "10.5.0.0/24", "203.0.113.254")
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.5.0.1:8080")
	send := func(sport uint16) uint64 {
		t.Helper()
		before := tb.drops(t)["redirect_failed"]
		in := spec{src: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), sport), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		if v, _ := tb.xdp(t, in); v != xdpRedirect {
			t.Fatalf("verdict %d, want XDP_REDIRECT to d1", v)
		}
		if err := tb.d.RunXDPLive(in, d0); err != nil {
			t.Fatal(err)
		}
		return tb.drops(t)["redirect_failed"] - before
	}
	if n := send(33000); n != 1 {
		t.Fatalf("into a veth whose peer runs no XDP: redirect_failed +%d, want 1", n)
	}
	peer, err := tb.h.LinkByName("d1p")
	if err != nil {
		t.Fatal(err)
	}
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: peer.Attrs().Index})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if n := send(33001); n != 0 {
		t.Fatalf("into a veth whose peer runs XDP: redirect_failed +%d, want 0", n)
	}
}

// TestTargetCounterIndex: a target's counters live at an index the data
// plane gives it when it is staged. A flow keeps counting under its target
// after a migration moved the frontend away (the target in no slot);
// once that flow is gone too, two GC sweeps take the index back, and the
// next new target that gets it starts from zero. A reopened data plane
// (agent restart on pinned maps) still names the indices in use.
func TestTargetCounterIndex(t *testing.T) {
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), PortMin: 40000, PortMax: 40999, IdleTimeout: 30 * time.Second}
	tb := newTestbed(t, cfg)
	udp := func(client, front string) []byte {
		return spec{src: ap(client), dst: ap(front), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	send := func(client, front string) {
		t.Helper()
		if v, _ := tb.xdp(t, udp(client, front)); v != xdpTX {
			t.Fatalf("%s -> %s: verdict %d, want XDP_TX", client, front, v)
		}
	}
	counts := func() string {
		t.Helper()
		got, err := tb.d.TargetCounters()
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, c := range got {
			s += fmt.Sprintf("%s/%s:%d ", c.Target, c.Proto, c.ToPackets)
		}
		return s
	}
	want := func(what, w string) {
		t.Helper()
		if got := counts(); got != w {
			t.Fatalf("%s: target counters %q, want %q", what, got, w)
		}
	}
	sweep := func() {
		t.Helper()
		if st, err := tb.d.GC(0); err != nil || !st.Wrapped {
			t.Fatalf("GC: %+v, %v; want a whole sweep", st, err)
		}
	}

	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	send("198.51.100.1:1000", "10.0.0.1:7000")
	want("one flow", "10.2.0.1:7001/udp:1 ")
	// Migrations: 7001 leaves both slots; its flow stays pinned to it.
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7002")
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7003")
	for range 3 {
		sweep()
	}
	send("198.51.100.1:1000", "10.0.0.1:7000")
	send("198.51.100.2:1000", "10.0.0.1:7000")
	want("after the migrations", "10.2.0.1:7001/udp:2 10.2.0.1:7003/udp:1 ")

	// The first flow expires: GC removes it, then takes 7001's index back.
	if err := tb.d.AgeClient(ap("198.51.100.1:1000"), 40*time.Second, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	freed := 0
	for range 3 {
		st, err := tb.d.GC(0)
		if err != nil {
			t.Fatal(err)
		}
		freed += st.TargetIndices
	}
	if freed != 1 { // 7001's; 7002 is still in the inactive slot
		t.Fatalf("GC took back %d indices, want 1", freed)
	}
	want("after the flow expired", "10.2.0.1:7003/udp:1 ")
	// A new target takes the freed index: it starts from zero.
	tb.stage(t, "10.0.0.1:7100/udp", "redirect:10.2.0.1:7004")
	tb.stage(t, "10.0.0.1:7200/udp", "redirect:10.2.0.1:7005")
	send("198.51.100.3:1000", "10.0.0.1:7100")
	send("198.51.100.4:1000", "10.0.0.1:7200")
	want("new targets", "10.2.0.1:7003/udp:1 10.2.0.1:7004/udp:1 10.2.0.1:7005/udp:1 ")

	// Restart on the pinned maps: the indices are known again.
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}
	tb.d = openTest(t, cfg)
	want("reopened", "10.2.0.1:7003/udp:1 10.2.0.1:7004/udp:1 10.2.0.1:7005/udp:1 ")
	send("198.51.100.2:1000", "10.0.0.1:7000")
	tb.stage(t, "10.0.0.1:7300/udp", "redirect:10.2.0.1:7004") // the same target, another frontend: its index
	send("198.51.100.5:1000", "10.0.0.1:7300")
	want("reopened, more packets", "10.2.0.1:7003/udp:2 10.2.0.1:7004/udp:2 10.2.0.1:7005/udp:1 ")
}

// TestTargetIndexAfterRemoveGrace: the index of a removed frontend's
// target is not taken back while the grace period started by the delete
// has not passed (a packet in flight may still copy it into a new flow),
// however many GC walks complete meanwhile; once it has passed, it is.
func TestTargetIndexAfterRemoveGrace(t *testing.T) {
	d := openTest(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	f := mustFrontend(t, "10.0.0.1:7000/udp")
	dptest.SetActive(t, d, f, mustTarget(t, "redirect:10.2.0.1:7001"))
	if err := d.Remove(f); err != nil {
		t.Fatal(err)
	}
	release := d.HoldTargetGrace()
	if n := d.PendingTargets(); n != 1 {
		t.Fatalf("after remove: %d indices wait for the grace, want 1", n)
	}
	gc := func() int {
		t.Helper()
		freed := 0
		for range 3 {
			st, err := d.GC(0)
			if err != nil || !st.Wrapped {
				t.Fatalf("GC: %+v, %v; want a whole sweep", st, err)
			}
			freed += st.TargetIndices
		}
		return freed
	}
	if n := gc(); n != 0 {
		t.Fatalf("GC took back %d indices within the grace, want 0", n)
	}
	release()
	if n := gc(); n != 1 {
		t.Fatalf("GC took back %d indices after the grace, want 1", n)
	}
	if n := d.PendingTargets(); n != 0 {
		t.Fatalf("after the grace and GC: %d indices still wait, want 0", n)
	}
}
