package dataplane_test

import (
	"encoding/binary"
	"testing"

	"github.com/roamnet/roam/dataplane/lb"
)

// TestUnrewritableNotHandedToHost: fragments, IPv4 options and IPv6
// extension headers are not rewritten; one of a flow the programs send
// away from this host (new to a redirected frontend, or pinned to a
// target) is dropped, not handed to the host as if it were for the
// frontend (where no socket, or the host's own, would take it); one for a
// local frontend, for no frontend, or a later fragment (no ports) is
// passed; each counted under its reason (issue 15 item 9).
func TestUnrewritableNotHandedToHost(t *testing.T) {
	tb := newRedirectTestbed(t)
	tb.stage(t, "10.0.0.2:80/tcp", "local")

	frame := func(client, frontend string, proto lb.Proto) []byte {
		flags := ""
		if proto == lb.TCP {
			flags = "S"
		}
		return spec{src: ap(client), dst: ap(frontend), proto: proto, flags: flags, payload: []byte("0123456789abcdef"), srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
	}
	for _, c := range []struct {
		desc    string
		in      []byte
		verdict uint32
		reason  string
	}{
		{"ipv4 first fragment, redirected frontend", frag4(frame("198.51.100.7:33000", "10.0.0.1:80", lb.TCP), 0, true), xdpDrop, "fragment"},
		{"ipv4 last fragment (no ports)", frag4(frame("198.51.100.7:33000", "10.0.0.1:80", lb.TCP), 8, false), xdpPass, "fragment"},
		{"ipv4 first fragment, local frontend", frag4(frame("198.51.100.7:33001", "10.0.0.2:80", lb.TCP), 0, true), xdpPass, "fragment"},
		{"ipv4 options, redirected frontend", options4(frame("198.51.100.7:5000", "10.0.0.1:7000", lb.UDP)), xdpDrop, "ip_options"},
		{"ipv4 options, no frontend", options4(frame("198.51.100.7:5000", "10.0.0.9:7000", lb.UDP)), xdpPass, "ip_options"},
		{"ipv6 hop-by-hop, redirected frontend", ext6(frame("[2001:db8:c::7]:5000", "[2001:db8::1]:7000", lb.UDP), 0), xdpDrop, "ipv6_ext"},
		{"ipv6 first fragment, redirected frontend", ext6(frame("[2001:db8:c::7]:5001", "[2001:db8::1]:7000", lb.UDP), 44), xdpDrop, "fragment"},
		{"ipv6 hop-by-hop, no frontend", ext6(frame("[2001:db8:c::7]:5000", "[2001:db8::9]:7000", lb.UDP), 0), xdpPass, "ipv6_ext"},
	} {
		t.Logf("case: %s", c.desc)
		before := tb.drops(t)
		v, _ := tb.xdp(t, c.in)
		if v != c.verdict {
			t.Fatalf("verdict %d, want %d", v, c.verdict)
		}
		if n := tb.drops(t)[c.reason] - before[c.reason]; n != 1 {
			t.Fatalf("reason %s counted %d, want 1", c.reason, n)
		}
	}

	// A flow pinned to the target stays away after a commit to local: its
	// fragments are dropped; a new flow's now pass to the host.
	t.Logf("case: pinned flow after a commit to local")
	if v, _ := tb.xdp(t, frame("198.51.100.8:33000", "10.0.0.1:80", lb.TCP)); v != xdpTX {
		t.Fatalf("opening SYN: verdict %d", v)
	}
	tb.stage(t, "10.0.0.1:80/tcp", "local")
	pinned := spec{src: ap("198.51.100.8:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", payload: []byte("0123456789abcdef"), srcMAC: macPeer, dstMAC: macD0, seq: 2}.build(t)
	if v, _ := tb.xdp(t, frag4(pinned, 0, true)); v != xdpDrop {
		t.Fatalf("fragment of the pinned flow: verdict %d, want XDP_DROP", v)
	}
	if v, _ := tb.xdp(t, frag4(frame("198.51.100.8:33001", "10.0.0.1:80", lb.TCP), 0, true)); v != xdpPass {
		t.Fatalf("fragment of a new flow to the now local frontend: verdict %d, want XDP_PASS", v)
	}
}

// frag4 makes an Ethernet+IPv4 frame a fragment at offset (in 8-byte
// units), with more fragments to come if more.
func frag4(frame []byte, offset uint16, more bool) []byte {
	out := append([]byte(nil), frame...)
	fo := offset & 0x1fff
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(out[14+6:], fo)
	setIPv4Checksum(out)
	return out
}

// options4 gives an Ethernet+IPv4 frame 4 bytes of options (NOPs).
func options4(frame []byte) []byte {
	out := append(append(append([]byte(nil), frame[:34]...), 1, 1, 1, 1), frame[34:]...)
	out[14] = 0x46
	binary.BigEndian.PutUint16(out[14+2:], binary.BigEndian.Uint16(out[14+2:])+4)
	setIPv4Checksum(out)
	return out
}

// ext6 puts one 8-byte IPv6 extension header after an Ethernet+IPv6 frame's
// header: hop-by-hop (0, a PadN option) or a first fragment (44, more to come).
func ext6(frame []byte, nh uint8) []byte {
	h := []byte{frame[14+6], 0, 1, 4, 0, 0, 0, 0}
	if nh == 44 {
		h = []byte{frame[14+6], 0, 0, 1, 0, 0, 0, 7}
	}
	out := append(append(append([]byte(nil), frame[:54]...), h...), frame[54:]...)
	out[14+6] = nh
	binary.BigEndian.PutUint16(out[14+4:], binary.BigEndian.Uint16(out[14+4:])+8)
	return out
}
