package dataplane_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// ctFlow is one flow of a conntrack scenario, driven packet by packet
// through the XDP program (BPF_PROG_TEST_RUN): a client talks to a
// frontend redirected to a target, with real sequence numbers.
type ctFlow struct {
	t            *testing.T
	tb           *testbed
	fe           lb.Frontend
	target       lb.Target // where the flow's packets must go (changes when a new flow takes the tuple)
	client, snat netip.AddrPort
	cseq, sseq   uint32 // next sequence number of each side
	other        int    // next port of "other" clients
}

// packet runs one packet of the scenario: "c FLAGS" from the client, "t FLAGS"
// from the target ("t FA!": a FIN that does not acknowledge the client's,
// which crossed it), data with "+", "o S" a SYN of another client to the
// same frontend. It checks where a transmitted packet went and returns the
// verdict.
func (fl *ctFlow) packet(do string) uint32 {
	t := fl.t
	t.Helper()
	who, flags, _ := strings.Cut(do, " ")
	crossed := strings.HasSuffix(flags, "!")
	flags = strings.TrimSuffix(flags, "!")
	var payload []byte
	if strings.HasSuffix(flags, "+") {
		flags = strings.TrimSuffix(flags, "+")
		payload = []byte("some data")
	}
	advance := func(seq *uint32) {
		*seq += uint32(len(payload))
		if strings.ContainsAny(flags, "SF") {
			*seq++
		}
	}
	front := netip.AddrPortFrom(fl.fe.Addr, fl.fe.Port)
	switch who {
	case "c", "o":
		src, seq, ack := fl.client, fl.cseq, fl.sseq
		if who == "o" {
			fl.other++
			src = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.99"), uint16(20000+fl.other))
			seq, ack = 77, 0
		} else {
			advance(&fl.cseq)
		}
		if !strings.Contains(flags, "A") {
			ack = 0
		}
		in := spec{src: src, dst: front, proto: lb.TCP, flags: flags, payload: payload, seq: seq, ackn: ack, srcMAC: macPeer, dstMAC: macD0}.build(t)
		v, out := fl.tb.xdp(t, in)
		if v == xdpTX && who == "c" {
			p := verifyChecksums(t, out)
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			sport, dport := l4Ports(p)
			if got := lb.Redirect(netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.DstIP.To4())), dport)); got != fl.target {
				t.Fatalf("%q went to %s, want %s", do, got, fl.target)
			}
			snat := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.SrcIP.To4())), sport)
			if fl.snat.IsValid() && snat != fl.snat && !strings.Contains(flags, "S") {
				t.Fatalf("%q left from %s, the flow's SNAT is %s", do, snat, fl.snat)
			}
			fl.snat = snat
		}
		return v
	case "t":
		ack := fl.cseq
		if crossed {
			ack-- // the client's FIN not acknowledged
		}
		if !strings.Contains(flags, "A") {
			ack = 0
		}
		seq := fl.sseq
		advance(&fl.sseq)
		from := netip.AddrPortFrom(fl.target.Addr, fl.target.Port)
		in := spec{src: from, dst: fl.snat, proto: lb.TCP, flags: flags, payload: payload, seq: seq, ackn: ack, srcMAC: macGW, dstMAC: macD0}.build(t)
		v, out := fl.tb.xdp(t, in)
		if v == xdpTX {
			p := verifyChecksums(t, out)
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			sport, dport := l4Ports(p)
			if !ip.DstIP.Equal(net.IP(fl.client.Addr().AsSlice())) || dport != fl.client.Port() ||
				!ip.SrcIP.Equal(net.IP(fl.fe.Addr.AsSlice())) || sport != fl.fe.Port {
				t.Fatalf("%q went %s:%d -> %s:%d, want %s -> %s", do, ip.SrcIP, sport, ip.DstIP, dport, front, fl.client)
			}
		}
		return v
	}
	t.Fatalf("bad step %q", do)
	return 0
}

// state is the flow's state as FlowList reports it ("-" when it has timed out or is gone).
func (fl *ctFlow) state() string {
	fl.t.Helper()
	list, err := fl.tb.d.FlowList(fl.fe)
	if err != nil {
		fl.t.Fatal(err)
	}
	for _, f := range list {
		if f.Client == fl.client {
			return f.State
		}
	}
	return "-"
}

// ctTimeouts are the scenarios' timeouts.
var ctTimeouts = dataplane.Timeouts{SYN: 2 * time.Second, SYNEvict: 600 * time.Millisecond, Established: 20 * time.Second, Close: time.Second,
	TimeWait: 6 * time.Second, UDPDrain: time.Second}

// ctStep is one step of a scenario and what must hold after it.
type ctStep struct {
	do      string // a packet (see ctFlow.packet), "age DURATION", or "commit" (the frontend moves to another target)
	verdict uint32 // for a packet
	state   string // the flow's state after the step ("" not checked)
	live    int    // the flow's share of Flows(frontend, the flow's target) after the step
}

// TestConntrackStateMachine: the TCP state machine, packet by packet in both
// directions, with the programs' clock moved forward by ageing the entries:
// every transition, FIN from either side first and both at once, RST from
// either side, a spoofed RST contradicted by data, a SYN on a done tuple,
// the timeouts per state (and which state lets another flow take the
// flow's SNAT port: the range here is one port), liveness over both
// directions, and what Flows (the drain's question) counts.
func TestConntrackStateMachine(t *testing.T) {
	// Timeouts scaled down so that ageing stays within a fresh machine's
	// uptime (the programs' clock counts from boot); their order is the
	// defaults' order.
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000, Timeouts: ctTimeouts})
	established := []ctStep{{"c S", xdpTX, "syn", 1}, {"t SA", xdpTX, "syn", 1}, {"c A", xdpTX, "established", 1}}
	scenarios := []struct {
		desc  string
		local bool
		steps []ctStep
	}{
		{"handshake, data, the client closes first: done at the target's FIN, port free after the close timeout", false, append(established,
			ctStep{"c A+", xdpTX, "established", 1}, ctStep{"t A+", xdpTX, "established", 1},
			ctStep{"c FA", xdpTX, "fin_wait", 1}, ctStep{"t A", xdpTX, "fin_wait", 1},
			ctStep{"t FA", xdpTX, "closed", 0}, ctStep{"c A", xdpTX, "closed", 0},
			ctStep{"o S", xdpDrop, "closed", 0},
			ctStep{"age 1500ms", 0, "-", 0}, ctStep{"o S", xdpTX, "-", 0})},
		{"the target closes first: done, and its TIME_WAIT holds the port", false, append(established,
			ctStep{"t FA", xdpTX, "fin_wait", 1}, ctStep{"c FA", xdpTX, "time_wait", 0}, ctStep{"t A", xdpTX, "time_wait", 0},
			ctStep{"age 1500ms", 0, "time_wait", 0}, ctStep{"o S", xdpDrop, "time_wait", 0},
			ctStep{"age 5s", 0, "-", 0}, ctStep{"o S", xdpTX, "-", 0})},
		{"simultaneous close: the target's FIN crossed the client's, so it holds TIME_WAIT too", false, append(established,
			ctStep{"c FA", xdpTX, "fin_wait", 1}, ctStep{"t FA!", xdpTX, "time_wait", 0},
			ctStep{"c A", xdpTX, "time_wait", 0}, ctStep{"t A", xdpTX, "time_wait", 0},
			ctStep{"age 1500ms", 0, "time_wait", 0}, ctStep{"o S", xdpDrop, "time_wait", 0})},
		{"half-close keeps the established timeout", false, append(established,
			ctStep{"c FA", xdpTX, "fin_wait", 1}, ctStep{"t A+", xdpTX, "fin_wait", 1},
			ctStep{"age 10s", 0, "fin_wait", 1}, ctStep{"o S", xdpDrop, "fin_wait", 1}, ctStep{"t A+", xdpTX, "fin_wait", 1})},
		{"the client's RST ends the flow at once", false, append(established,
			ctStep{"c R", xdpTX, "reset", 0}, ctStep{"o S", xdpDrop, "reset", 0},
			ctStep{"age 1500ms", 0, "-", 0}, ctStep{"o S", xdpTX, "-", 0})},
		{"the target's RST reaches the forward entry through the NAT entry", false, append(established,
			ctStep{"t RA", xdpTX, "reset", 0}, ctStep{"age 1500ms", 0, "-", 0}, ctStep{"o S", xdpTX, "-", 0})},
		{"a spoofed RST (as from the target) followed by the client's data does not end the flow", false, append(established,
			ctStep{"t R", xdpTX, "reset", 0}, ctStep{"c A+", xdpTX, "established", 1},
			ctStep{"age 3s", 0, "established", 1}, ctStep{"o S", xdpDrop, "established", 1}, ctStep{"c A", xdpTX, "established", 1})},
		{"a spoofed RST (as from the client) followed by the target's data does not end the flow", false, append(established,
			ctStep{"c R", xdpTX, "reset", 0}, ctStep{"t A+", xdpTX, "established", 1},
			ctStep{"age 3s", 0, "established", 1}, ctStep{"o S", xdpDrop, "established", 1}, ctStep{"c A", xdpTX, "established", 1})},
		{"a SYN on a done tuple starts a new flow on the frontend's active target", false, append(established,
			ctStep{"c FA", xdpTX, "fin_wait", 1}, ctStep{"t FA", xdpTX, "closed", 0}, ctStep{"c A", xdpTX, "closed", 0},
			ctStep{"commit", 0, "closed", 0}, ctStep{"c S", xdpTX, "syn", 1}, ctStep{"t SA", xdpTX, "syn", 1},
			ctStep{"c A", xdpTX, "established", 1})},
		{"a SYN sent again on a live flow is the same flow", false, []ctStep{
			{"c S", xdpTX, "syn", 1}, {"c S", xdpTX, "syn", 1}, {"t SA", xdpTX, "syn", 1}, {"c A", xdpTX, "established", 1},
			{"c S", xdpTX, "established", 1}}},
		{"an embryonic flow times out in seconds, and its port is taken", false, []ctStep{
			{"c S", xdpTX, "syn", 1}, {"t SA", xdpTX, "syn", 1}, {"age 300ms", 0, "syn", 1}, {"o S", xdpDrop, "syn", 1},
			{"age 2s", 0, "-", 0}, {"o S", xdpTX, "-", 0}, {"c A", xdpDrop, "-", 0}}},
		{"an embryonic flow whose client is silent is over at the SYN timeout, whatever the target sends", false, []ctStep{
			{"c S", xdpTX, "syn", 1}, {"t SA", xdpTX, "syn", 1}, {"age 1500ms", 0, "syn", 1}, {"t SA", xdpTX, "syn", 1},
			{"age 600ms", 0, "-", 0}, {"o S", xdpTX, "-", 0}}},
		{"an embryonic flow silent both ways for the eviction time yields its port to a new flow, and says so", false, []ctStep{
			{"c S", xdpTX, "syn", 1}, {"t SA", xdpTX, "syn", 1}, {"age 300ms", 0, "syn", 1}, {"o S", xdpDrop, "syn", 1},
			{"age 400ms", 0, "syn", 1}, {"o S", xdpTX, "-", 0}, {"c A", xdpDrop, "-", 0}}},
		{"an established flow lives long, kept alive by either direction", false, append(established,
			ctStep{"age 12s", 0, "established", 1}, ctStep{"t A+", xdpTX, "established", 1},
			ctStep{"age 12s", 0, "established", 1}, ctStep{"o S", xdpDrop, "established", 1},
			ctStep{"c A", xdpTX, "established", 1}, ctStep{"age 21s", 0, "-", 0}, ctStep{"o S", xdpTX, "-", 0})},
		{"a TCP packet without SYN and without flow gets no port and no target", false, []ctStep{
			{"c A", xdpDrop, "-", 0}, {"c FA", xdpDrop, "-", 0}, {"c R", xdpDrop, "-", 0}, {"o S", xdpTX, "-", 0}}},
		{"a local flow: established at the client's ACK, done at its FIN (the replies bypass XDP)", true, []ctStep{
			{"c S", xdpPass, "syn", 1}, {"c A", xdpPass, "established", 1}, {"c A+", xdpPass, "established", 1},
			{"c FA", xdpPass, "closed", 0}, {"c A", xdpPass, "closed", 0}, {"age 1500ms", 0, "-", 0}}},
		{"a local frontend passes a TCP packet without flow to the stack, without state", true, []ctStep{
			{"c A", xdpPass, "-", 0}}},
	}
	for i, sc := range scenarios {
		// Not t.Run: a subtest runs on another goroutine, outside this
		// thread's network namespace.
		t.Logf("scenario: %s", sc.desc)
		n := i + 1
		target := fmt.Sprintf("redirect:10.2.0.%d:8080", n)
		if sc.local {
			target = "local"
		}
		fl := &ctFlow{t: t, tb: tb, client: ap(fmt.Sprintf("198.51.100.7:%d", 1000+n)), cseq: 1000, sseq: 5000}
		fl.fe = tb.stage(t, fmt.Sprintf("10.0.0.%d:80/tcp", n), target)
		fl.target = mustTarget(t, target)
		for j, st := range sc.steps {
			before := tb.drops(t)
			switch {
			case strings.HasPrefix(st.do, "age "):
				d, err := time.ParseDuration(strings.TrimPrefix(st.do, "age "))
				if err != nil {
					t.Fatal(err)
				}
				if err := tb.d.AgeFlows(d); err != nil {
					t.Fatal(err)
				}
			case st.do == "commit":
				fl.target = mustTarget(t, fmt.Sprintf("redirect:10.2.0.%d:8080", 100+n))
				tb.stage(t, fl.fe.String(), fl.target.String())
			default:
				if v := fl.packet(st.do); v != st.verdict {
					after := tb.drops(t)
					t.Fatalf("step %d %q: verdict %d, want %d (drops %v -> %v)", j, st.do, v, st.verdict, before, after)
				}
			}
			if st.state != "" {
				if got := fl.state(); got != st.state {
					t.Fatalf("step %d %q: state %s, want %s", j, st.do, got, st.state)
				}
			}
			// Flows counts the other clients' live flows too.
			list, _ := tb.d.FlowList(fl.fe)
			others := 0
			for _, f := range list {
				if f.Client != fl.client && !f.Done && f.Target == fl.target {
					others++
				}
			}
			if got, err := tb.d.Flows(fl.fe, fl.target); err != nil || got != st.live+others {
				t.Fatalf("step %d %q: Flows(%s) = %d, %v; want %d + %d others' (flows %v)", j, st.do, fl.target, got, err, st.live, others, list)
			}
			// A new flow that took the port of a live embryonic flow evicted it, and counts it.
			if st.do == "o S" && st.verdict == xdpTX {
				want := before["syn_evicted"]
				if j > 0 && sc.steps[j-1].state == "syn" && sc.steps[j-1].live == 1 {
					want++
				}
				if after := tb.drops(t); after["syn_evicted"] != want {
					t.Fatalf("step %d %q: syn_evicted went %d -> %d, want %d", j, st.do, before["syn_evicted"], after["syn_evicted"], want)
				}
			}
			if st.verdict == xdpDrop {
				after := tb.drops(t)
				reason := "port_exhausted"
				if strings.HasPrefix(st.do, "c ") {
					reason = "no_flow"
				}
				if after[reason] != before[reason]+1 {
					t.Fatalf("step %d %q: dropped, but %s went %d -> %d", j, st.do, reason, before[reason], after[reason])
				}
			}
		}
	}
}

// udpFlow sends UDP packets of one client through the XDP program.
type udpFlow struct {
	t      *testing.T
	tb     *testbed
	fe     lb.Frontend
	client netip.AddrPort
	snat   netip.AddrPort // learnt from the first packet out
}

// send sends a client packet and returns the verdict and the target it went to.
func (u *udpFlow) send(client netip.AddrPort) (uint32, lb.Target) {
	u.t.Helper()
	in := spec{src: client, dst: netip.AddrPortFrom(u.fe.Addr, u.fe.Port), proto: lb.UDP, payload: []byte("q"), srcMAC: macPeer, dstMAC: macD0}.build(u.t)
	v, out := u.tb.xdp(u.t, in)
	if v != xdpTX {
		return v, lb.Target{}
	}
	p := verifyChecksums(u.t, out)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	sport, dport := l4Ports(p)
	if client == u.client {
		u.snat = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.SrcIP.To4())), sport)
	}
	return v, lb.Redirect(netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.DstIP.To4())), dport))
}

// reply sends a reply of target t to the client's SNAT address and port.
func (u *udpFlow) reply(t lb.Target) uint32 {
	u.t.Helper()
	in := spec{src: netip.AddrPortFrom(t.Addr, t.Port), dst: u.snat, proto: lb.UDP, payload: []byte("r"), srcMAC: macGW, dstMAC: macD0}.build(u.t)
	v, _ := u.tb.xdp(u.t, in)
	return v
}

// udpHelpers are the checks both UDP tests use.
func udpHelpers(t *testing.T, tb *testbed) (age func(time.Duration), expect func(string, any, any), flows func(lb.Frontend, lb.Target) int) {
	age = func(d time.Duration) {
		t.Helper()
		if err := tb.d.AgeFlows(d); err != nil {
			t.Fatal(err)
		}
	}
	expect = func(what string, got, want any) {
		t.Helper()
		if got != want {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
	flows = func(f lb.Frontend, target lb.Target) int {
		t.Helper()
		n, err := tb.d.Flows(f, target)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	return age, expect, flows
}

// TestConntrackUDPOneWay: a UDP flow lives while either direction is
// active: a one-way flow outlives the idle timeout and keeps its port (the
// range here is one port), whichever way its packets go.
func TestConntrackUDPOneWay(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000, IdleTimeout: 8 * time.Second, Timeouts: ctTimeouts})
	age, expect, flows := udpHelpers(t, tb)
	other := ap("198.51.100.99:7777")
	t1 := mustTarget(t, "redirect:10.2.0.50:5353")
	u := &udpFlow{t: t, tb: tb, fe: tb.stage(t, "10.0.1.1:53/udp", t1.String()), client: ap("198.51.100.7:5000")}
	v, to := u.send(u.client)
	expect("first packet", v, uint32(xdpTX))
	expect("first packet's target", to, t1)
	port := u.snat
	for i := 0; i < 4; i++ { // 12 s of client packets, 3 s apart: longer than the 8 s idle timeout
		age(3 * time.Second)
		v, to = u.send(u.client)
		expect("client packet", v, uint32(xdpTX))
		expect("client packet's target", to, t1)
		expect("client packet's SNAT", u.snat, port)
		v, _ = u.send(other)
		expect("another client, while the one-way flow holds the only port", v, uint32(xdpDrop))
	}
	for i := 0; i < 4; i++ { // 12 s of replies only
		age(3 * time.Second)
		expect("reply", u.reply(t1), uint32(xdpTX))
		v, _ = u.send(other)
		expect("another client, while the replies keep the flow alive", v, uint32(xdpDrop))
		expect("flows", flows(u.fe, t1), 1)
	}
	v, _ = u.send(u.client)
	expect("client after the replies", v, uint32(xdpTX))
	expect("client's SNAT after the replies", u.snat, port)
	age(9 * time.Second)
	expect("flows after the idle timeout", flows(u.fe, t1), 0)
	v, _ = u.send(other)
	expect("another client after the idle timeout", v, uint32(xdpTX))
	v, _ = u.send(u.client)
	expect("the first client, its port taken", v, uint32(xdpDrop))
}

// TestConntrackUDPDrain: once a commit moved its frontend away, a UDP flow
// idle (both ways) for UDPDrain is done: Flows stops counting it when the
// program would send its next packet to the new target.
func TestConntrackUDPDrain(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40009, IdleTimeout: 8 * time.Second, Timeouts: ctTimeouts})
	age, expect, flows := udpHelpers(t, tb)
	t2 := mustTarget(t, "redirect:10.2.0.52:5353")
	u := &udpFlow{t: t, tb: tb, fe: tb.stage(t, "10.0.1.2:53/udp", "redirect:10.2.0.51:5353"), client: ap("198.51.100.7:5001")}
	t1 := mustTarget(t, "redirect:10.2.0.51:5353")
	quiet := &udpFlow{t: t, tb: tb, fe: u.fe, client: ap("198.51.100.8:5001")}
	replied := &udpFlow{t: t, tb: tb, fe: u.fe, client: ap("198.51.100.9:5001")}
	for _, x := range []*udpFlow{u, quiet, replied} {
		_, to := x.send(x.client)
		expect("before the commit", to, t1)
	}
	tb.stage(t, u.fe.String(), t2.String())
	expect("flows on the old target right after the commit", flows(u.fe, t1), 3)
	age(500 * time.Millisecond)
	_, to := u.send(u.client)
	expect("a flow active within UDPDrain", to, t1)
	age(700 * time.Millisecond) // u: 700 ms idle; quiet, replied: 1200 ms
	expect("replied's reply", replied.reply(t1), uint32(xdpTX))
	expect("flows on the old target (quiet is done)", flows(u.fe, t1), 2)
	_, to = replied.send(replied.client)
	expect("a flow whose replies kept it alive", to, t1)
	_, to = quiet.send(quiet.client)
	expect("a flow idle for UDPDrain: a new flow", to, t2)
	expect("flows on the new target", flows(u.fe, t2), 1)
	age(1500 * time.Millisecond)
	expect("flows on the old target after UDPDrain", flows(u.fe, t1), 0)
	_, to = u.send(u.client)
	expect("the last flow on the old target, idle for UDPDrain", to, t2)
}

// TestNoFlowLocalSocket: a TCP packet without SYN and without flow, to a
// redirected frontend, is passed to the stack when a socket of this host
// owns its tuple, and dropped (counted) when none does.
func TestNoFlowLocalSocket(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	fe := tb.stage(t, "10.0.0.9:80/tcp", "redirect:10.2.0.1:8080")
	lo, err := tb.h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.0.0.9/32", "198.51.100.50/32"} {
		addAddr(t, tb.h, lo, a)
	}
	if err := tb.h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "10.0.0.9:80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP{198, 51, 100, 50}}}).Dial("tcp4", "10.0.0.9:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	owned := netip.MustParseAddrPort(c.LocalAddr().String())
	front := netip.AddrPortFrom(fe.Addr, fe.Port)
	for _, tc := range []struct {
		client  netip.AddrPort
		verdict uint32
		dropped uint64
	}{{owned, xdpPass, 0}, {netip.AddrPortFrom(owned.Addr(), owned.Port()+1), xdpDrop, 1}} {
		before := tb.drops(t)
		in := spec{src: tc.client, dst: front, proto: lb.TCP, flags: "A", seq: 1, ackn: 1, srcMAC: macPeer, dstMAC: macD0}.build(t)
		if v, _ := tb.xdp(t, in); v != tc.verdict {
			t.Fatalf("ACK from %s: verdict %d, want %d", tc.client, v, tc.verdict)
		}
		if n := tb.dropsSince(t, before)["no_flow"]; n != tc.dropped {
			t.Fatalf("ACK from %s: no_flow counted %d, want %d", tc.client, n, tc.dropped)
		}
	}
	if n, _ := tb.d.ConntrackEntries(); n != 0 {
		t.Fatalf("%d conntrack entries, want none: no state without a SYN", n)
	}
}
