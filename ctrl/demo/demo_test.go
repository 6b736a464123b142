package demo

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/testport"
)

// copyOf is one running demo server.
type copyOf struct {
	addr string // HTTP and UDP, same port
	stop context.CancelFunc
	done chan struct{} // closed when Serve returned
	err  error         // what it returned
}

func (c *copyOf) wait() error { <-c.done; return c.err }

// freeAddr is an address free for TCP and UDP, below the ephemeral range
// (a port taken there with listen :0 may be an outgoing connection's by
// the time the demo binds it).
func freeAddr(t *testing.T) string { return testport.Addr(t) }

func start(t *testing.T, cluster string, idleGrace, linger time.Duration) *copyOf {
	t.Helper()
	a := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := &copyOf{addr: a, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = Serve(ctx, Config{Listen: a, UDP: []string{a}, Cluster: cluster, IdleGrace: idleGrace, Linger: linger, UDPLinger: linger})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + a + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo at %s not answering: %v", a, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		_ = c.wait()
	})
	return c
}

// balancer stands for roam's load balancer: a new connection (or UDP
// socket) goes to the current target, one already open stays where it is.
type balancer struct {
	mu     sync.Mutex
	target string
}

func (b *balancer) set(t string) { b.mu.Lock(); b.target = t; b.mu.Unlock() }

func (b *balancer) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	b.mu.Lock()
	t := b.target
	b.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, network, t)
}

// TestMigrationsLoseNothing moves the "service" between copies many times
// while short, keep-alive and UDP clients run: at each move new flows go to
// the new copy (the commit), then the old copy is stopped (SIGTERM). No
// request of any kind may fail.
func TestMigrationsLoseNothing(t *testing.T) {
	lb := &balancer{}
	cur := start(t, "c0", 200*time.Millisecond, 50*time.Millisecond)
	lb.set(cur.addr)
	l, err := load.Start(context.Background(), load.Config{Dial: lb.dial, Timeout: 2 * time.Second, Clients: []load.Client{
		{Kind: load.Short, Addr: "frontend:80", Interval: 5 * time.Millisecond},
		{Kind: load.KeepAlive, Addr: "frontend:80", Conns: 8},
		{Kind: load.UDP, Addr: "frontend:80", Interval: 5 * time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.WaitServedBy(ctx, "c0", 10); err != nil {
		t.Fatal(err)
	}
	const moves = 10
	var stops []time.Duration
	for i := 1; i <= moves; i++ {
		next := start(t, fmt.Sprintf("c%d", i), 200*time.Millisecond, 50*time.Millisecond)
		lb.set(next.addr) // the commit
		t0 := time.Now()
		cur.stop() // SIGTERM to the old copy
		if err := cur.wait(); err != nil {
			t.Errorf("old copy c%d stopped with %v", i-1, err)
		}
		stops = append(stops, time.Since(t0))
		cur = next
		if err := l.WaitServedBy(ctx, fmt.Sprintf("c%d", i), 10); err != nil {
			t.Fatal(err)
		}
	}
	rep := l.Stop()
	var b strings.Builder
	rep.Print(&b, 10)
	t.Logf("old copies stopped in %v\n%s", stops, b.String())
	for _, k := range load.Kinds {
		if kr := rep.Kinds[k]; kr.Failed != 0 || kr.Requests == 0 {
			t.Errorf("%s: %d of %d requests failed", k, kr.Failed, kr.Requests)
		}
	}
	if d := rep.Kinds[load.KeepAlive].Dials; d < 8*(moves+1) {
		t.Errorf("keep-alive client opened %d connections over %d moves: the old copies did not close them", d, moves)
	}
}

// TestIdleConnectionClosedAfterGrace: a connection that stays idle is
// closed once the grace is over, and the server returns; one that sends a
// request within the grace gets its answer with "Connection: close".
func TestStopClosesConnections(t *testing.T) {
	c := start(t, "a", 300*time.Millisecond, 50*time.Millisecond)
	idle, busy := c.dial(t, "tcp"), c.dial(t, "tcp")
	ask := func(conn net.Conn) (*http.Response, error) {
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	for _, conn := range []net.Conn{idle, busy} {
		resp, err := ask(conn)
		if err != nil || resp.Close {
			t.Fatalf("before stop: %v, close %v", err, resp != nil && resp.Close)
		}
	}
	t0 := time.Now()
	c.stop()
	time.Sleep(50 * time.Millisecond)
	resp, err := ask(busy)
	if err != nil || !resp.Close || resp.StatusCode != 200 {
		t.Fatalf("request while stopping: %v (want an answer with Connection: close)", err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection: read %d, %v; want it closed", n, err)
	}
	closed := time.Since(t0)
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
	if closed < 250*time.Millisecond || closed > 3*time.Second {
		t.Errorf("idle connection closed %v after stop, want about the 300ms grace", closed)
	}
}

// TestStopWithoutConnectionsIsQuick: nothing open, UDP quiet: the server
// returns after the UDP linger, not the idle grace.
func TestStopWithoutConnectionsIsQuick(t *testing.T) {
	c := start(t, "a", 5*time.Second, 50*time.Millisecond)
	t0 := time.Now()
	c.stop()
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("stopped in %v", d)
	}
}

// TestUDPAnsweredWhileBusy: once stopping, UDP is answered as long as
// datagrams keep coming, and stops Linger after the last one.
func TestUDPLingers(t *testing.T) {
	c := start(t, "a", 100*time.Millisecond, 500*time.Millisecond)
	conn := c.dial(t, "udp")
	c.stop()
	t0 := time.Now()
	buf := make([]byte, 512)
	for i := range 20 {
		msg := fmt.Sprintf("ping %d\n", i)
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil || !strings.HasSuffix(string(buf[:n]), msg) || load.ServedBy(string(buf[:n])) != "a" {
			t.Fatalf("datagram %d while stopping: %q, %v", i, buf[:n], err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-c.done:
		t.Fatalf("returned %v after %v while datagrams came", c.err, time.Since(t0))
	default:
	}
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
}

func TestMainFlags(t *testing.T) {
	if err := Main(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "--listen or --udp") {
		t.Errorf("no address: %v", err)
	}
	a, b := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, []string{"--udp", a, "--udp", b, "--cluster", "x", "--linger", "1ms", "--udp-linger", "1ms"})
	}()
	for _, addr := range []string{a, b} {
		got := askUDP(t, addr, "hi")
		if load.ServedBy(got) != "x" || !strings.HasSuffix(got, "hi") {
			t.Errorf("udp %s answered %q", addr, got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestUDPAnswersFromTheAddressAsked: bound to the unspecified address, the
// demo answers from the address a datagram was sent to (a node's frontend
// address, not the route's source), or a connected client drops it.
func TestUDPAnswersFromTheAddressAsked(t *testing.T) {
	for _, listen := range []string{"0.0.0.0", ""} {
		port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Serve(ctx, Config{UDP: []string{listen + ":" + port}, Cluster: "a", Linger: time.Millisecond, UDPLinger: time.Millisecond})
		}()
		// 127.0.0.2 is answered from 127.0.0.1 by the route's choice.
		got := askUDP(t, "127.0.0.2:"+port, "q")
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if load.ServedBy(got) != "a" {
			t.Errorf("listening on %q: 127.0.0.2 answered %q", listen+":"+port, got)
		}
	}
}

// dial connects to the copy over network, closed when the test ends.
func (c *copyOf) dial(t *testing.T, network string) net.Conn {
	t.Helper()
	conn, err := net.Dial(network, c.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// askUDP sends msg to addr until an answer comes (the server may not
// listen yet), for up to about 5s; "" when none came.
func askUDP(t *testing.T, addr, msg string) string {
	t.Helper()
	for range 100 {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte(msg))
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		conn.Close()
		if err == nil {
			return string(buf[:n])
		}
		time.Sleep(10 * time.Millisecond) // refused: not listening yet
	}
	return ""
}
