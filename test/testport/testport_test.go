package testport

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
)

func TestFreeIsBindableBelowEphemeralAndDistinct(t *testing.T) {
	seen := map[int]bool{}
	for _, p := range N(t, 50) {
		if p < lo || p > hi {
			t.Fatalf("port %d outside %d-%d", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed twice", p)
		}
		seen[p] = true
	}
	p := Free(t, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	for _, h := range []string{"127.0.0.1", "127.0.0.2"} {
		l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(int(p))))
		if err != nil {
			t.Fatalf("port %d not bindable on %s: %v", p, h, err)
		}
		l.Close()
	}
}

func TestFreeSkipsATakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := uint16(l.Addr().(*net.TCPAddr).Port)
	if free(taken, []netip.Addr{netip.MustParseAddr("127.0.0.1")}) {
		t.Fatalf("port %d reported free while bound", taken)
	}
}
