package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// ceilingPorts is the home's SNAT port range in TestSRv6NoConnectionCeiling:
// small, so that a test reaches NAT's ceiling (the default has 21,000).
const (
	ceilingPortMin = 40000
	ceilingPortMax = 40015
	ceilingConns   = 3 * (ceilingPortMax - ceilingPortMin + 1)
)

// TestSRv6NoConnectionCeiling pushes new connections from one client
// address to one target past the SNAT port range, with the same home data
// plane (SNAT ports 40000-40015) in both modes. NAT mode: the home
// rewrites each new connection's source to its SNAT address and a port of
// that range, so exactly the range's 16 connections open and the next ones
// are refused (port_exhausted counted, their connects time out). SRv6 path
// mode: the client's packets go unchanged inside the encapsulation, no
// SNAT port is taken, and all 48 connections open and are answered, the
// service seeing the client's own address; port_exhausted stays where it
// was.
func TestSRv6NoConnectionCeiling(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	snat := netip.MustParseAddr("fd20:2::1") // the home's address towards the old location
	bed := newSRv6BedWith(t, func(c *dataplane.Config) {
		c.SNATv6, c.PortMin, c.PortMax = snat, ceilingPortMin, ceilingPortMax
	})
	topo, home, old := bed.topo, bed.home, bed.old
	startCopy(t, topo.Old, "old")
	// NAT mode reaches the old location's copy at the location's own
	// address (a copy answering from the frontend's address would answer
	// along its SRv6 return route).
	natTarget := netip.AddrPortFrom(netip.MustParseAddr("fd20:2::2"), netns.CopyTCPPort)
	natCopy, err := netns.StartCopyServer(topo.Old, "old", natTarget.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(natCopy.Close)
	// The home resolves the target's neighbour first (the NAT path passes
	// a packet with none to the kernel: not what this test is about).
	if c, err := netns.Dial(ctx, topo.Home, "tcp", natTarget.String()); err != nil {
		t.Fatalf("connect from the home to %s: %v", natTarget, err)
	} else {
		c.Close()
	}
	fe := netip.AddrPortFrom(netns.SRv6FrontendV6, netns.CopyTCPPort)
	f := lb.Frontend{Addr: fe.Addr(), Port: fe.Port(), Proto: lb.TCP}

	// connectAll opens ceilingConns connections at once from the client
	// and asks one request on each; it returns how many were answered and
	// the client addresses the service saw. The connections stay open
	// until all were tried.
	connectAll := func(mode string) (answered int, seen map[string]int) {
		t.Helper()
		var (
			mu    sync.Mutex
			wg    sync.WaitGroup
			conns []*tcpClient
		)
		seen = map[string]int{}
		for i := 0; i < ceilingConns; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Two SYNs (the kernel resends at 1 s): enough for a
				// connection NAT can take, not for one it refuses.
				dctx, cancel := context.WithTimeout(ctx, 2500*time.Millisecond)
				defer cancel()
				c, err := netns.Dial(dctx, topo.Client, "tcp", fe.String())
				if err != nil {
					return
				}
				k := &tcpClient{c: c, r: bufio.NewReader(c)}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := fmt.Fprintf(c, "1\n"); err != nil {
					c.Close()
					return
				}
				line, err := k.r.ReadString('\n')
				if err != nil {
					c.Close()
					return
				}
				var who, client string
				var n int
				if _, err := fmt.Sscanf(line, "%s %s %d", &who, &client, &n); err != nil || n != 1 {
					t.Errorf("%s: answer %q", mode, line)
				}
				mu.Lock()
				answered++
				seen[client]++
				conns = append(conns, k)
				mu.Unlock()
			}()
		}
		wg.Wait()
		for _, k := range conns {
			k.c.Close()
		}
		return answered, seen
	}

	t.Log("NAT mode: redirect to the old location's copy at its own address")
	old.setCopy(t, dataplane.SRv6Serving, f)
	home.commit(t, lb.Redirect(natTarget), f)
	before := dptest.Drops(t, home.d)["port_exhausted"]
	natOK, natSeen := connectAll("nat")
	natExhausted := dptest.Drops(t, home.d)["port_exhausted"] - before
	t.Logf("NAT: %d of %d connections answered, port_exhausted %d, the service saw %v", natOK, ceilingConns, natExhausted, natSeen)
	if natExhausted == 0 {
		t.Fatalf("NAT mode: port_exhausted 0 after %d connections over %d SNAT ports", ceilingConns, ceilingPortMax-ceilingPortMin+1)
	}
	// Exactly the ports: a new flow probes PORT_RETRIES (16, bpf/consts.h)
	// slots from its cursor by a stride coprime with the 16 slots, so it
	// finds any free port; an answered connection holds its port until
	// every connection was tried (an established flow is not taken over),
	// and the refused ones' resent SYNs (at 1 s) find none free.
	if ports := ceilingPortMax - ceilingPortMin + 1; natOK != ports {
		t.Fatalf("NAT mode: %d connections answered over %d SNAT ports, want exactly %d (syn_evicted %d)", natOK, ports, ports, dptest.Drops(t, home.d)["syn_evicted"])
	}
	if natSeen[snat.String()] != natOK {
		t.Fatalf("NAT mode: the service saw %v, want the SNAT address %s for all %d", natSeen, snat, natOK)
	}

	t.Log("SRv6 path mode: [old]")
	// The NAT mode's flows are closed; their conntrack entries do not
	// matter to SRv6 (no port taken).
	home.commit(t, lb.SRv6(netns.SRv6SIDOld), f)
	before = dptest.Drops(t, home.d)["port_exhausted"]
	srv6OK, srv6Seen := connectAll("srv6")
	srv6Exhausted := dptest.Drops(t, home.d)["port_exhausted"] - before
	t.Logf("SRv6: %d of %d connections answered, port_exhausted %d, the service saw %v", srv6OK, ceilingConns, srv6Exhausted, srv6Seen)
	if srv6OK != ceilingConns {
		t.Fatalf("SRv6 mode: %d of %d connections answered, want every one (no SNAT port ceiling)", srv6OK, ceilingConns)
	}
	if srv6Exhausted != 0 {
		t.Fatalf("SRv6 mode: port_exhausted counted %d", srv6Exhausted)
	}
	if srv6Seen[netns.SRv6ClientV6.String()] != ceilingConns {
		t.Fatalf("SRv6 mode: the service saw %v, want the client's own %s for all", srv6Seen, netns.SRv6ClientV6)
	}
}
