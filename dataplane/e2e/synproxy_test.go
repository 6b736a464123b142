package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestSYNProxyClients: real clients through the SYN proxy (always on), no
// flood: every connection's handshake is answered by the home with a
// cookie and the flow to the target starts at the client's ACK, so every
// byte after it crosses the sequence-number translation. HTTP/1.1
// keep-alive (40 GETs over one connection, then 20 fresh connections),
// and 8 MiB echoed through the copy server (8 MiB up, 8 MiB down, byte for
// byte). The counters say each connection was proxied. It logs what the
// proxy costs a fresh connection's first request: the request sent before
// the target's SYN-ACK reached the home is lost (synproxy_early) and the
// client sends it again after its retransmission timeout.
func TestSYNProxyClients(t *testing.T) {
	netns.SkipUnlessRoot(t)
	httpTarget := netip.AddrPortFrom(netns.AbroadAddr1, 8080)
	topo := abroadTopology(t, httpTarget)
	cp, err := netns.StartCopyServer(topo.Abroad, "copy", netns.AbroadAddr1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Close)
	pin := "/sys/fs/bpf/roam-e2e-synproxy-" + topo.Suffix
	t.Cleanup(func() {
		if err := dataplane.Unpin(pin); err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	d, err := openHome(topo, dataplane.Config{PinPath: pin, SNATv4: netns.HomeWAN, PortMin: 41000, PortMax: 41999, SYNProxy: dataplane.SYNProxyAlways}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for fe, tg := range map[lb.Frontend]netip.AddrPort{
		{Addr: netns.HomeAddr, Port: 80, Proto: lb.TCP}: httpTarget,
		{Addr: netns.HomeAddr, Port: 81, Proto: lb.TCP}: netip.AddrPortFrom(netns.AbroadAddr1, netns.CopyTCPPort),
	} {
		dptest.SetActive(t, d, fe, lb.Redirect(tg))
	}
	before := dptest.Drops(t, d)

	// Keep-alive: one connection, 40 requests.
	tr := &http.Transport{DialContext: netns.Dialer(topo.Client), MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "http://" + netip.AddrPortFrom(netns.HomeAddr, 80).String() + "/"
	reused := 0
	for i := 0; i < 40; i++ {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if ci.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("keep-alive GET %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(body), "hello from abroad") {
			t.Fatalf("keep-alive GET %d: %q, %v", i, body, err)
		}
	}
	if reused != 39 {
		t.Fatalf("keep-alive: %d of 40 requests reused the connection, want 39", reused)
	}
	tr.CloseIdleConnections()

	// Fresh connections: connect and first answer times.
	var connects, answers []time.Duration
	for i := 0; i < 20; i++ {
		rc := &realClients{}
		start := time.Now()
		c, err := rc.one(topo.Client, netip.AddrPortFrom(netns.HomeAddr, 80))
		if err != nil {
			t.Fatalf("fresh connection %d: %v", i, err)
		}
		connects, answers = append(connects, c), append(answers, time.Since(start))
	}
	slices.Sort(connects)
	slices.Sort(answers)

	// 8 MiB each way.
	const n = 8 << 20
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := netns.Dial(ctx, topo.Client, "tcp", netip.AddrPortFrom(netns.HomeAddr, 81).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(c)
		fmt.Fprintf(w, "bulk %d\n", n)
		_, err := w.Write(data)
		if err == nil {
			err = w.Flush()
		}
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("send: %v", err)
	}
	took := time.Since(start)
	if !bytes.Equal(got, data) {
		i := 0
		for i < n && got[i] == data[i] {
			i++
		}
		t.Fatalf("the echo differs from what was sent, first at byte %d", i)
	}

	delta := dptest.DropsSince(t, d, before)
	t.Logf("fresh connections through the proxy: connect p50 %s max %s; first answer p50 %s max %s",
		connects[len(connects)/2], connects[len(connects)-1], answers[len(answers)/2], answers[len(answers)-1])
	t.Logf("8 MiB up and back in %s (%.0f Mbit/s each way); counters: cookie_sent %d, cookie_ok %d, cookie_bad %d, flows %d, early %d",
		took, float64(n*8)/took.Seconds()/1e6, delta["synproxy_cookie_sent"], delta["synproxy_cookie_ok"], delta["synproxy_cookie_bad"], delta["synproxy_flows"], delta["synproxy_early"])
	const conns = 1 + 20 + 1
	if delta["synproxy_cookie_ok"] != conns || delta["synproxy_flows"] != conns || delta["synproxy_cookie_sent"] < conns {
		t.Fatalf("want all %d connections proxied: cookie_sent %d, cookie_ok %d, flows %d", conns, delta["synproxy_cookie_sent"], delta["synproxy_cookie_ok"], delta["synproxy_flows"])
	}
	if delta["synproxy_cookie_bad"] != 0 {
		t.Fatalf("cookie_bad %d, want 0: real clients' cookies are valid", delta["synproxy_cookie_bad"])
	}
}
