package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// keepAliveClient sends GETs one after the other over the persistent
// connections of its own Go transport (as HTTP/1.1 keep-alive clients,
// HTTP/2 and gRPC do), counting answers by server and failures.
type keepAliveClient struct {
	tr     *http.Transport
	c      *http.Client
	mu     sync.Mutex
	by     map[string]int // answers by server name
	failed []error
}

func newKeepAliveClient(ns string) *keepAliveClient {
	tr := &http.Transport{DialContext: netns.Dialer(ns), MaxIdleConnsPerHost: 1}
	return &keepAliveClient{tr: tr, c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, by: map[string]int{}}
}

func (k *keepAliveClient) run(ctx context.Context, url string) {
	for ctx.Err() == nil {
		resp, err := k.c.Get(url)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		k.mu.Lock()
		switch {
		case ctx.Err() != nil:
		case err != nil:
			k.failed = append(k.failed, err)
		default:
			name, _, _ := strings.Cut(strings.TrimPrefix(string(body), "hello from "), " ")
			k.by[name]++
		}
		k.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

func (k *keepAliveClient) answers(name string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.by[name]
}

// TestKeepAliveAcrossCommit: persistent connections opened before a commit
// stay on the old target (flow pinning) while new connections reach the
// new one; when the old target shuts down gracefully (it answers with
// "Connection: close" and closes idle connections, as a well-behaved server
// asked to stop does) the clients reconnect to the new target without a
// failed request, and Flows on the old target reaches 0 as soon as the
// last old connection has closed: the drain ends then, not at a timeout.
// Then the clients close their connections themselves (FIN from the client
// first) and Flows on the new target reaches 0 just as fast.
func TestKeepAliveAcrossCommit(t *testing.T) {
	ctx := rootWithin(t, 3*time.Minute)
	topo := netns.NewTestTopology(t)
	servers := map[string]*netns.AbroadServer{}
	for i, addr := range []netip.Addr{netns.AbroadAddr1, netns.AbroadAddr2} {
		name := fmt.Sprintf("abroad-%d", i+1)
		srv, err := netns.StartAbroadServer(topo.Abroad, netip.AddrPortFrom(addr, 8080).String(), name, "")
		if err != nil {
			t.Fatal(err)
		}
		servers[name] = srv
	}
	t.Cleanup(func() {
		for _, srv := range servers {
			srv.Close()
		}
	})

	pin := "/sys/fs/bpf/roam-e2e-ka-" + topo.Suffix
	d, err := openHome(topo, dataplane.Config{PinPath: pin, SNATv4: netns.HomeWAN, PortMin: 40000, PortMax: 40999}, true)
	t.Cleanup(func() {
		if d != nil {
			d.Close()
		}
		if err := dataplane.Unpin(pin); err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}

	fe := lb.Frontend{Addr: netns.HomeAddr, Port: 80, Proto: lb.TCP}
	t1 := lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr1, 8080))
	t2 := lb.Redirect(netip.AddrPortFrom(netns.AbroadAddr2, 8080))
	url := "http://" + netip.AddrPortFrom(netns.HomeAddr, 80).String() + "/"
	commit := func(target lb.Target) {
		t.Helper()
		dptest.SetActive(t, d, fe, target)
	}
	// waitFlows polls Flows every 2 ms until it is want, and returns how long that took.
	waitFlows := func(target lb.Target, want int, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		var n int
		for time.Since(start) < within {
			n, err = d.Flows(fe, target)
			if err != nil {
				t.Fatal(err)
			}
			if n == want {
				return time.Since(start)
			}
			time.Sleep(2 * time.Millisecond)
		}
		list, _ := d.FlowList(fe)
		t.Fatalf("Flows(%s) = %d after %s, want %d; flows: %v", target, n, within, want, list)
		return 0
	}

	commit(t1)
	const clients = 4
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var ka []*keepAliveClient
	for i := 0; i < clients; i++ {
		k := newKeepAliveClient(topo.Client)
		ka = append(ka, k)
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.run(runCtx, url)
		}()
	}
	defer func() {
		stop()
		wg.Wait()
	}()
	waitFlows(t1, clients, 30*time.Second)

	// Commit abroad-2: the persistent connections stay on abroad-1.
	commit(t2)
	before := make([]int, clients)
	for i, k := range ka {
		before[i] = k.answers("abroad-1")
	}
	time.Sleep(300 * time.Millisecond) // let every client send more requests on its connection
	for i, k := range ka {
		if k.answers("abroad-1") <= before[i] {
			t.Fatalf("client %d: no answer from abroad-1 after the commit: its persistent connection was moved or cut", i)
		}
	}
	if n, err := d.Flows(fe, t1); err != nil || n != clients {
		t.Fatalf("Flows(%s) after the commit = %d, %v; want the %d persistent connections", t1, n, err, clients)
	}
	fresh := newKeepAliveClient(topo.Client)
	if resp, err := fresh.c.Get(url); err != nil {
		t.Fatalf("a new connection after the commit: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "abroad-2") {
			t.Fatalf("a new connection after the commit reached %q, want abroad-2", b)
		}
	}
	fresh.tr.CloseIdleConnections()

	// abroad-1 stops gracefully: "Connection: close" on its answers, idle
	// connections closed. The clients reconnect, to abroad-2.
	start := time.Now()
	servers["abroad-1"].Close()
	delete(servers, "abroad-1")
	closed := time.Since(start)
	took := waitFlows(t1, 0, 5*time.Second)
	t.Logf("abroad-1 shut down in %s; Flows(%s) reached 0 %s later", closed.Round(time.Millisecond), t1, took.Round(time.Millisecond))
	for i, k := range ka {
		n := k.answers("abroad-2")
		deadline := time.Now().Add(10 * time.Second)
		for k.answers("abroad-2") <= n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if k.answers("abroad-2") <= n {
			t.Fatalf("client %d never reached abroad-2 after abroad-1 stopped", i)
		}
	}
	waitFlows(t2, clients, 5*time.Second)

	// The clients stop and close their connections (their FIN first).
	stop()
	wg.Wait()
	for _, k := range ka {
		k.tr.CloseIdleConnections()
	}
	took = waitFlows(t2, 0, 5*time.Second)
	t.Logf("clients closed their connections; Flows(%s) reached 0 %s later", t2, took.Round(time.Millisecond))
	for i, k := range ka {
		if len(k.failed) > 0 {
			t.Errorf("client %d: %d failed requests, first: %v", i, len(k.failed), k.failed[0])
		}
		t.Logf("client %d: answers %v", i, k.by)
	}
}
