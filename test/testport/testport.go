// Package testport hands tests ports to bind later.
//
// A test that starts a daemon on a port of its choosing must pick the port
// first and bind it later, often more than once (a restart binds it again).
// A port taken from the kernel with listen :0 comes from the ephemeral range
// (32768-60999 by default), where the kernel also picks the local port of
// every outgoing connection on the machine, so by the time the daemon binds
// it an unrelated connection may hold it. These ports are drawn below that
// range, where only explicit binds land, and are checked free for both TCP
// and UDP on every address asked.
package testport

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
)

const (
	lo = 10000
	hi = 32767 // below net.ipv4.ip_local_port_range's default start
)

var (
	mu     sync.Mutex
	handed = map[uint16]bool{} // not handed twice in one test binary
)

// Free returns a port free for TCP and UDP on every one of addrs (127.0.0.1
// when none is given). It fails the test if none is found.
func Free(t testing.TB, addrs ...netip.Addr) uint16 {
	t.Helper()
	p, err := Take(addrs...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Take is Free for code that runs outside a test function (a lane's
// fixtures, a benchmark): it returns an error instead of failing a test.
func Take(addrs ...netip.Addr) (uint16, error) {
	if len(addrs) == 0 {
		addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	for range 500 {
		p := uint16(lo + rand.IntN(hi-lo+1))
		mu.Lock()
		seen := handed[p]
		mu.Unlock()
		if seen || !free(p, addrs) {
			continue
		}
		mu.Lock()
		handed[p] = true
		mu.Unlock()
		return p, nil
	}
	return 0, fmt.Errorf("testport: no free port in %d-%d on %v", lo, hi, addrs)
}

// N returns n distinct free ports on 127.0.0.1.
func N(t testing.TB, n int) []int {
	t.Helper()
	ps, err := TakeN(n)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TakeN is N for code that runs outside a test function.
func TakeN(n int) ([]int, error) {
	ps := make([]int, n)
	for i := range ps {
		p, err := Take()
		if err != nil {
			return nil, err
		}
		ps[i] = int(p)
	}
	return ps, nil
}

// Addr returns "127.0.0.1:<a free port>".
func Addr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(Free(t))))
}

func free(p uint16, addrs []netip.Addr) bool {
	var closers []interface{ Close() error }
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, p).String()
		l, err := net.Listen("tcp", ap)
		if err != nil {
			return false
		}
		closers = append(closers, l)
		u, err := net.ListenPacket("udp", ap)
		if err != nil {
			return false
		}
		closers = append(closers, u)
	}
	return true
}

// Listen is a TCP listener on a loopback port the kernel picks (bound at
// once, so the ephemeral range does no harm), closed when the test ends.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	return closedAtEnd[net.Listener](t)(net.Listen("tcp", "127.0.0.1:0"))
}

// ListenPacket is Listen for UDP.
func ListenPacket(t testing.TB) net.PacketConn {
	t.Helper()
	return closedAtEnd[net.PacketConn](t)(net.ListenPacket("udp", "127.0.0.1:0"))
}

// closedAtEnd fails t on an error, else closes c when t ends.
func closedAtEnd[C io.Closer](t testing.TB) func(c C, err error) C {
	return func(c C, err error) C {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}
