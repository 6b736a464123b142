package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/schedslice"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testbed"
)

// The controller's share of a reroute: its calls to the home agent, over
// the agent API as the home controller makes them (from the cluster's
// namespace, mutual TLS with the controller's identity), two transports
// side by side in one run, rounds alternating gap apart:
//
//   - sync: the agent client as built (agentapi's syncTransport: HTTP/1.1
//     on kept connections, each call written and read on the caller's
//     goroutine);
//   - h2: net/http's Transport with HTTP/2 (the client before it).
//
// A round of those is a two-call reroute: one /v1/stages call of 2
// frontends (TCP and UDP), then one /v1/commits call (a cluster of
// several nodes makes these on every node). Beside them, with the client
// as built, the one call a migration's reroute makes to a cluster's only
// node: /v1/reroute (stage both, then commit both, in the agent, each
// round from the local target, where the two-call rounds before it left
// both, to a redirect: every timed call changes the target), timed from
// the call to its answer,
// its rounds alternating between the home's roam processes' scheduler
// slice as built (roam-agent and roam-ctrl --sched-slice: the kernel's
// default) and a short one (schedslice.Min), set from here on their
// threads and put back at the end. The timed caller is this process, at
// the kernel's slice: the caller's wake-up (roam-ctrl's in a migration)
// is not in that A/B. The frontends are the bench's own (port benchPort of the home's
// WAN address, no service behind it), removed at the end. Both clients
// are warmed first, as a migration warms its agents.

const benchPort = 65000

// agentCalls times rounds stage+commit calls per transport, and rounds
// one-call reroutes (µs): as built (one) and with a short slice
// (oneShort).
// Each one-call round is also written to perRound, when not nil (see
// roundLine).
func agentCalls(ctx context.Context, tb *testbed.Testbed, rounds int, gap time.Duration, perRound io.Writer) (sync, h2 stageCommit, one, oneShort []float64, inAgent agentShare, err error) {
	home, err := tb.Cluster("home")
	if err != nil {
		return sync, h2, one, oneShort, inAgent, err
	}
	work, err := tb.WorkDir()
	if err != nil {
		return sync, h2, one, oneShort, inAgent, err
	}
	id, err := pki.Load(testbed.CtrlTLSDir(work, "home"))
	if err != nil {
		return sync, h2, one, oneShort, inAgent, err
	}
	url := fmt.Sprintf("https://127.0.0.1:%d", testbed.AgentAPIPort)
	sc := agentapi.NewTLS(url, id.ClientConfig(pki.ExpectNodeOf("home")))
	sc.SetDialer(netns.Dialer(home.NS))
	hc := agentapi.NewTLS(url, nil)
	hc.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: netns.Dialer(home.NS),
		TLSClientConfig: id.ClientConfig(pki.ExpectNodeOf("home")), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4,
		IdleConnTimeout: time.Minute}}
	defer hc.HTTP.CloseIdleConnections()
	defer sc.HTTP.CloseIdleConnections()
	fs := []lb.Frontend{{Addr: home.WAN4, Port: benchPort, Proto: lb.TCP}, {Addr: home.WAN4, Port: benchPort, Proto: lb.UDP}}
	ts := []lb.Target{lb.Local, lb.Local}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, f := range fs {
			if rerr := sc.Remove(rctx, f); rerr != nil && err == nil {
				err = fmt.Errorf("remove bench frontend: %w", rerr)
			}
		}
	}()
	clients := []*agentapi.Client{sc, hc}
	figs := []*stageCommit{&sync, &h2}
	for _, c := range clients {
		if err := c.Warm(ctx); err != nil {
			return sync, h2, one, oneShort, inAgent, err
		}
	}
	// The home's roam processes, whose slice the one-call rounds
	// alternate; put back as built at the end.
	pids, err := pidsIn(home.NS, "roam-agent", "roam-ctrl")
	if err != nil {
		return sync, h2, one, oneShort, inAgent, err
	}
	defer func() {
		if serr := setSlices(pids, 0); serr != nil && err == nil {
			err = serr
		}
	}()
	alt := []lb.Target{lb.Redirect(netip.AddrPortFrom(home.WAN4, benchPort+1)), lb.Redirect(netip.AddrPortFrom(home.WAN4, benchPort+1))}
	for r := range 3 * rounds {
		if r%3 == 2 {
			k := r / 3
			slice, fig := time.Duration(0), &one
			if k%2 == 1 {
				slice, fig = schedslice.Min, &oneShort
			}
			if err := setSlices(pids, slice); err != nil {
				return sync, h2, one, oneShort, inAgent, err
			}
			// Every timed reroute changes the target: the two rounds
			// before left both frontends on ts, and the agent makes
			// nothing of a reroute to the target a frontend already
			// has (a call made again). Earlier, half of these rounds
			// rerouted to ts and timed that no-op.
			m0 := monotonic()
			t0 := time.Now()
			times, err := (agentapi.Group{sc}).Reroute(ctx, fs, alt)
			if err != nil {
				return sync, h2, one, oneShort, inAgent, err
			}
			t1 := time.Now()
			if perRound != nil {
				if _, err := fmt.Fprintln(perRound, roundLine(k, slice, m0, t0, t1, times)); err != nil {
					return sync, h2, one, oneShort, inAgent, fmt.Errorf("write rounds: %w", err)
				}
			}
			*fig = append(*fig, float64(t1.Sub(t0).Nanoseconds())/1e3)
			if fig == &one {
				// The agent's wall clock beside ours (one host).
				inAgent.to = append(inAgent.to, us(times.Received.Sub(t0)))
				inAgent.back = append(inAgent.back, us(t1.Sub(times.Answered)))
				inAgent.agent = append(inAgent.agent, us(times.Agent))
				inAgent.stage = append(inAgent.stage, us(times.Stage))
				inAgent.commit = append(inAgent.commit, us(times.Commit))
			}
			select {
			case <-ctx.Done():
				return sync, h2, one, oneShort, inAgent, ctx.Err()
			case <-time.After(gap):
			}
			continue
		}
		c, fig := clients[r%3], figs[r%3]
		t0 := time.Now()
		gens, err := c.StageAll(ctx, fs, ts)
		t1 := time.Now()
		if err != nil {
			return sync, h2, one, oneShort, inAgent, err
		}
		if err := c.CommitAll(ctx, fs, gens); err != nil {
			return sync, h2, one, oneShort, inAgent, err
		}
		t2 := time.Now()
		fig.stage = append(fig.stage, float64(t1.Sub(t0).Nanoseconds())/1e3)
		fig.commit = append(fig.commit, float64(t2.Sub(t1).Nanoseconds())/1e3)
		select {
		case <-ctx.Done():
			return sync, h2, one, oneShort, inAgent, ctx.Err()
		case <-time.After(gap):
		}
	}
	return sync, h2, one, oneShort, inAgent, nil
}

// agentShare is the agent's own share of each one-call reroute as built
// (µs, from its answer): its handler's time (the request read until the
// answer is ready to write) and, within it, the data plane's stage and
// commit; and, from the agent's wall clock beside the caller's, the
// request's way (the call made until the agent's handler was entered:
// the write, the wire, the agent's wake-up, TLS and the request's head)
// and the answer's (ready to write until the call returned: the write,
// the wire, the caller's wake-up, TLS, the answer read and decoded).
type agentShare struct {
	agent, stage, commit, to, back []float64
}

// monotonic is CLOCK_MONOTONIC in ns: the clock of ftrace's
// "trace_clock mono" and of perf's default.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// roundLine is one one-call reroute round as -rounds-out writes it, to
// lay beside a kernel trace of the same moments (ftrace with trace_clock
// mono, perf sched): its number, the home's processes' slice (ns, 0: the
// kernel's), then CLOCK_MONOTONIC ns of the call made, the agent's
// handler entered, its answer ready to write and the call returned (the
// agent's two from its wall clock, one host: shifted by this process's
// wall-to-monotonic offset at the call), then the agent's own time in
// the call, its data plane's stage and commit (µs).
func roundLine(k int, slice time.Duration, m0 int64, t0, t1 time.Time, times agentapi.RerouteTimes) string {
	off := t0.UnixNano() - m0
	return fmt.Sprintf("%d %d %d %d %d %d %.1f %.1f %.1f", k, slice.Nanoseconds(), m0, times.Received.UnixNano()-off,
		times.Answered.UnixNano()-off, m0+t1.Sub(t0).Nanoseconds(), us(times.Agent), us(times.Stage), us(times.Commit))
}

func setSlices(pids []int, d time.Duration) error {
	for _, pid := range pids {
		if _, err := schedslice.SetProcess(pid, d); err != nil {
			return fmt.Errorf("process %d: %w", pid, err)
		}
	}
	return nil
}

func printAgentCalls(sync, h2 stageCommit, one, oneShort []float64, inAgent agentShare, rounds int, gap time.Duration) {
	q := testbed.Quantile
	fmt.Printf("controller -> home agent calls (mutual TLS), stage and commit of 2 frontends, %d rounds each, %s apart, under the clients' load (µs):\n", rounds, gap)
	fmt.Printf("  %-28s %9s %9s %9s %9s %12s\n", "transport", "stage p50", "stage p99", "commit p50", "commit p99", "stage+commit p50")
	for _, row := range []struct {
		name string
		f    stageCommit
	}{{"sync HTTP/1.1 (as built)", sync}, {"net/http HTTP/2 (before)", h2}} {
		s50, s99, c50, c99, b50 := row.f.quantiles()
		fmt.Printf("  %-28s %9.0f %9.0f %10.0f %10.0f %12.0f\n", row.name, s50, s99, c50, c99, b50)
	}
	fmt.Printf("  ratio HTTP/2 / sync, p50: stage %.2f, commit %.2f\n", q(h2.stage, 0.5)/q(sync.stage, 0.5), q(h2.commit, 0.5)/q(sync.commit, 0.5))
	_, _, _, _, two := sync.quantiles()
	fmt.Printf("  one call (/v1/reroute: stage and commit of both in the agent, as a one-node cluster's migration makes it), as built: p50 %.0f, p99 %.0f; two calls / one call, p50: %.2f\n",
		q(one, 0.5), q(one, 0.99), two/q(one, 0.5))
	rest := make([]float64, len(one))
	for i := range one {
		rest[i] = one[i] - inAgent.agent[i]
	}
	fmt.Printf("    where it goes, p50: in the agent %.0f (its handler, request read to answer ready to write; the data plane's stage %.0f and commit %.0f in it), the rest %.0f (the request's and the answer's way, each end's wake-up, the caller's own work): the request's way %.0f (call made to the agent's handler entered), the answer's %.0f (answer ready to the call returned; both from the agent's wall clock beside ours)\n",
		q(inAgent.agent, 0.5), q(inAgent.stage, 0.5), q(inAgent.commit, 0.5), q(rest, 0.5), q(inAgent.to, 0.5), q(inAgent.back, 0.5))
	fmt.Printf("  one call with the home's roam processes at a %s scheduler slice (--sched-slice; rounds alternating with the above, as built: the kernel's default): p50 %.0f, p99 %.0f; short / as built, p50: %.2f\n",
		schedslice.Min, q(oneShort, 0.5), q(oneShort, 0.99), q(oneShort, 0.5)/q(one, 0.5))
	fmt.Println("  (every timed reroute moves both frontends from the local target to a redirect; the slice is the home's roam-agent's and roam-ctrl's, while the timed caller is this bench process, at the kernel's default slice: the caller's own wake-up, roam-ctrl's in a migration, is not in this A/B)")
}
