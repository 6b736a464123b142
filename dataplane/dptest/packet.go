package dptest

import (
	"encoding/binary"
	"net/netip"
)

// Sum16 adds b, as big-endian 16-bit words (an odd last byte padded with
// zero), to init in one's complement and folds the carries (RFC 1071):
// ^Sum16(header, 0) is an IPv4 header's checksum, and
// ^Sum16(segment, Sum16(pseudoHeader, 0)) a TCP, UDP or ICMPv6 one.
func Sum16(b []byte, init uint16) uint16 {
	s := uint32(init)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// PTB6 is an IPv6 ICMPv6 packet too big (no Ethernet) from router to to,
// reporting mtu and quoting as much of pkt as fits in 1280 bytes (RFC
// 4443), its checksum filled.
func PTB6(router, to netip.Addr, mtu uint32, pkt []byte) []byte {
	if len(pkt) > 1280-48 {
		pkt = pkt[:1280-48]
	}
	body := make([]byte, 8, 8+len(pkt))
	body[0] = 2
	binary.BigEndian.PutUint32(body[4:], mtu)
	body = append(body, pkt...)
	b := make([]byte, 40, 40+len(body))
	binary.BigEndian.PutUint32(b, 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(len(body)))
	b[6], b[7] = 58, 64
	s, d := router.As16(), to.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	pseudo := append(append([]byte{}, b[8:40]...), 0, 0, 0, 0, 0, 0, 0, 58)
	binary.BigEndian.PutUint32(pseudo[32:], uint32(len(body)))
	binary.BigEndian.PutUint16(body[2:], ^Sum16(body, Sum16(pseudo, 0)))
	return append(b, body...)
}

// SRv6Packet is an outer IPv6 header (hop limit hop, flow label label)
// and SRH around inner, an IP packet, without Ethernet: sids in the order
// visited, sl segments left, the outer destination the active segment.
func SRv6Packet(src netip.Addr, sids []netip.Addr, sl int, hop uint8, label uint32, inner []byte) []byte {
	n := len(sids)
	b := make([]byte, 40, 40+8+16*n+len(inner))
	binary.BigEndian.PutUint32(b[0:], 6<<28|label)
	binary.BigEndian.PutUint16(b[4:], uint16(8+16*n+len(inner)))
	b[6], b[7] = 43, hop
	s, d := src.As16(), sids[n-1-sl].As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	nh := byte(41)
	if inner[0]>>4 == 4 {
		nh = 4
	}
	b = append(b, nh, byte(2*n), 4, byte(sl), byte(n-1), 0, 0, 0)
	for i := n - 1; i >= 0; i-- {
		x := sids[i].As16()
		b = append(b, x[:]...)
	}
	return append(b, inner...)
}
