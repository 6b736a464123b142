package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
)

// MaxSNATPool is how many addresses a SNAT pool holds at most per family
// (bpf/consts.h SNAT_POOL_MAX: pool x port range slots fit in 32 bits).
const MaxSNATPool = 1024

// checkSNATPool validates a pool: count consecutive addresses from first,
// counted up in the last 32 bits without wrapping (the programs compare
// the first 96 bits and subtract the last 32).
func checkSNATPool(first netip.Addr, count int) error {
	if !first.IsValid() {
		if count != 0 {
			return fmt.Errorf("SNAT pool of %d addresses without a first address", count)
		}
		return nil
	}
	if count < 1 || count > MaxSNATPool {
		return fmt.Errorf("SNAT pool from %s: %d addresses, want 1-%d", first, count, MaxSNATPool)
	}
	if uint64(low32(first))+uint64(count)-1 > 0xffffffff {
		return fmt.Errorf("SNAT pool from %s: %d addresses run past the end of its last 32 bits", first, count)
	}
	return nil
}

// low32 is the last 32 bits of a (IPv4: the whole address).
func low32(a netip.Addr) uint32 {
	b := a.As16()
	return binary.BigEndian.Uint32(b[12:])
}

// nthAddr is first plus n, counted in the last 32 bits.
func nthAddr(first netip.Addr, n int) netip.Addr {
	b := first.As16()
	binary.BigEndian.PutUint32(b[12:], low32(first)+uint32(n))
	a := netip.AddrFrom16(b)
	if first.Is4() {
		return a.Unmap()
	}
	return a
}

// inSNATPool reports whether a is one of count addresses from first (bpf/nat.h snat_owns).
func inSNATPool(a, first netip.Addr, count int) bool {
	if !first.IsValid() || !a.IsValid() || a.Is4() != first.Is4() {
		return false
	}
	x, y := a.As16(), first.As16()
	if [12]byte(x[:12]) != [12]byte(y[:12]) {
		return false
	}
	return low32(a)-low32(first) < uint32(count)
}

// SNATPool lists the pool's addresses: count from first on.
func SNATPool(first netip.Addr, count int) []netip.Addr {
	if !first.IsValid() {
		return nil
	}
	out := make([]netip.Addr, 0, count)
	for i := 0; i < count; i++ {
		out = append(out, nthAddr(first, i))
	}
	return out
}

// SNATAddrs lists every SNAT address of the configuration, IPv4 first.
func (c Config) SNATAddrs() []netip.Addr {
	n4, n6 := c.SNATv4Count, c.SNATv6Count
	if n4 == 0 && c.SNATv4.IsValid() {
		n4 = 1
	}
	if n6 == 0 && c.SNATv6.IsValid() {
		n6 = 1
	}
	return append(SNATPool(c.SNATv4.Unmap(), n4), SNATPool(c.SNATv6, n6)...)
}

// ParseSNATPool reads a SNAT pool as roam-agent's --snat-addr takes it: an
// address (a pool of one), a range FIRST-LAST of consecutive addresses, or
// a prefix PREFIX/LEN given by its first address (every address of it:
// for dedicated SNAT addresses routed to the node). It returns the first
// address and the count.
func ParseSNATPool(s string) (netip.Addr, int, error) {
	s = strings.TrimSpace(s)
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(strings.TrimSpace(lo))
		b, err2 := netip.ParseAddr(strings.TrimSpace(hi))
		if err1 != nil || err2 != nil {
			return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: want FIRST-LAST addresses", s)
		}
		a, b = a.Unmap(), b.Unmap()
		if a.Is4() != b.Is4() || b.Less(a) || !inSNATPool(b, a, MaxSNATPool) {
			return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: LAST must follow FIRST, same family, at most %d addresses", s, MaxSNATPool)
		}
		n := int(low32(b)-low32(a)) + 1
		return a, n, checkSNATPool(a, n)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: %w", s, err)
		}
		if p.Masked() != p {
			return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: give the prefix by its first address (%s), or a range FIRST-LAST", s, p.Masked())
		}
		host := p.Addr().BitLen() - p.Bits()
		if host > 10 {
			return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: more than %d addresses", s, MaxSNATPool)
		}
		a := p.Addr().Unmap()
		return a, 1 << host, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("SNAT pool %q: %w", s, err)
	}
	return a.Unmap(), 1, nil
}
