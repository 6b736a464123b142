package main

// The placement rows' clients run in processes of their own, as
// controllers do: the hello simulator and the placement requester are
// each this benchmark's binary started again with -client-of, driven over
// its stdin and stdout (one JSON command, one JSON answer per line). So while
// a row's placements are timed, the benchmark's own process is the MO
// (its embedded NATS and the MO replica) and nothing else: the
// requester's goroutines, allocations and GC cycles are not the MO's, and
// the runtime columns of a row are the MO process's alone. Time is taken
// in the requester's process, from before the request is sent to after
// its reply is decoded. A second requester inside the MO's process (the
// layout before) is timed after it, for comparison.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/childproc"
)

// clientCmd is one command to the client process.
type clientCmd struct {
	Op string `json:"op"` // fleet, place, flood, pause, quit
	// fleet: n clusters (simHello(i, n, interval)).
	N        int           `json:"n,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	// place: requests measured (after 200 to warm up); trace: write an
	// execution trace of them here.
	Requests int    `json:"requests,omitempty"`
	Trace    string `json:"trace,omitempty"`
	NoWarmUp bool   `json:"no_warm_up,omitempty"`
	// flood: total hellos cycling through the first clusters of the
	// fleet; pause: stop (or resume) the steady hellos.
	Total    int  `json:"total,omitempty"`
	Clusters int  `json:"clusters,omitempty"`
	On       bool `json:"on,omitempty"`
}

// clientAnswer answers a command.
type clientAnswer struct {
	Err     string          `json:"err,omitempty"`
	Latency []time.Duration `json:"latency,omitempty"`
	Failed  int             `json:"failed,omitempty"`
	// place: each request's id and wall clock times (legs.go), and the
	// requester's GC cycles and longest GC pause meanwhile.
	Trips      []trip  `json:"trips,omitempty"`
	GCs        uint64  `json:"gcs,omitempty"`
	GCPauseMax float64 `json:"gc_pause_max,omitempty"`
}

// trip is one timed placement: its request id, and the wall clock (Unix
// ns) before it was sent and after its reply was decoded.
type trip struct {
	ID         string `json:"id"`
	Sent, Recv int64
}

// clientProcs is the GOMAXPROCS of the client processes (0: Go's
// default, every core) (-client-gomaxprocs).
var clientProcs int

// clientProc is the client process, seen from the benchmark.
type clientProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startClientProc starts this binary again as the client of the MO at url.
func startClientProc(url string) (*clientProc, error) { return startClientProcs(url, clientProcs) }

// clientEnv is a client process's environment: environ without GOGC and
// GOMEMLIMIT (the MO's process may run with them set for an A/B; the
// clients keep Go's GC defaults) and GOMAXPROCS procs when procs > 0,
// else none: procs 0 is Go's default, not the benchmark's own GOMAXPROCS
// (which the output, printing 0, would not show).
func clientEnv(environ []string, procs int) []string {
	env := make([]string, 0, len(environ)+1) // not nil: a nil Env inherits everything
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); k != "GOGC" && k != "GOMEMLIMIT" && k != "GOMAXPROCS" {
			env = append(env, kv)
		}
	}
	if procs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(procs))
	}
	return env
}

// startClientProcs is startClientProc with GOMAXPROCS procs (0: Go's
// default).
func startClientProcs(url string, procs int) (*clientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-client-of", url, "-hello-slice", helloSlice.String())
	cmd.Env = clientEnv(os.Environ(), procs)
	in, out, err := childproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start the client process: %w", err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return &clientProc{cmd: cmd, in: in, out: sc}, nil
}

func (p *clientProc) do(c clientCmd) (clientAnswer, error) {
	b, _ := json.Marshal(c)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		return clientAnswer{}, fmt.Errorf("client process, %s: %w", c.Op, err)
	}
	if !p.out.Scan() {
		return clientAnswer{}, fmt.Errorf("client process, %s: no answer (%v)", c.Op, p.out.Err())
	}
	var a clientAnswer
	if err := json.Unmarshal(p.out.Bytes(), &a); err != nil {
		return clientAnswer{}, fmt.Errorf("client process, %s: %w", c.Op, err)
	}
	if a.Err != "" {
		return a, fmt.Errorf("client process, %s: %s", c.Op, a.Err)
	}
	return a, nil
}

// set plays a fleet of n simulated clusters (hellos every iv) and returns
// once each has sent its first hello.
func (p *clientProc) set(n int, iv time.Duration) error {
	_, err := p.do(clientCmd{Op: "fleet", N: n, Interval: iv})
	return err
}

func (p *clientProc) pause(on bool) error {
	_, err := p.do(clientCmd{Op: "pause", On: on})
	return err
}

func (p *clientProc) flood(total, clusters int) error {
	_, err := p.do(clientCmd{Op: "flood", Total: total, Clusters: clusters})
	return err
}

// place times n placements in the client process.
func (p *clientProc) place(n int, tracePath string) (clientAnswer, error) {
	return p.do(clientCmd{Op: "place", Requests: n, Trace: tracePath})
}

// placeNoWarmUp times n placements without warming up first.
func (p *clientProc) placeNoWarmUp(n int) (clientAnswer, error) {
	return p.do(clientCmd{Op: "place", Requests: n, NoWarmUp: true})
}

func (p *clientProc) pid() int { return p.cmd.Process.Pid }

// stop ends the client process (its hellos stop).
func (p *clientProc) stop() {
	if p == nil || p.cmd == nil {
		return
	}
	_, _ = p.do(clientCmd{Op: "quit"})
	_ = p.in.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.cmd = nil
}

// runClientProc is the client process: a hello simulator and a placement
// requester on connections of their own to the MO at url, driven by the
// commands on stdin.
func runClientProc(url string) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	pubConn, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connect publisher: %w", err)
	}
	defer pubConn.Close()
	reqConn, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connect requester: %w", err)
	}
	defer reqConn.Close()
	client, err := meta.NewClient(reqConn, "bench-requester", meta.WithTimeout(5*time.Second), meta.WithRetries(0), meta.WithoutCache(),
		meta.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer client.Close()
	sim := newSimulator(pubConn)
	defer sim.stop()

	in := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c clientCmd
		var a clientAnswer
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			return err
		}
		switch c.Op {
		case "fleet":
			hs := make([]meta.Hello, c.N)
			for i := range c.N {
				hs[i] = simHello(i, c.N, c.Interval)
			}
			sim.set(hs, c.Interval)
		case "pause":
			sim.pause(c.On)
		case "flood":
			if err := sim.flood(c.Total, c.Clusters); err != nil {
				a.Err = err.Error()
			}
		case "place":
			stopTrace, err := startTrace(c.Trace, c.Trace != "")
			if err != nil {
				a.Err = err.Error()
				break
			}
			rt0 := readRuntime()
			warm := 200
			if c.NoWarmUp {
				warm = 0
			}
			a.Latency, a.Trips, a.Failed, err = measurePlacementWarm(client, c.Requests, warm)
			rt := rtDelta(rt0, readRuntime())
			a.GCs, a.GCPauseMax = rt.gcCycles, rt.gcPauseMax
			stopTrace()
			if err != nil {
				a.Err = err.Error()
			}
		case "quit":
			return enc.Encode(a)
		default:
			a.Err = "unknown command " + c.Op
		}
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
	if err := in.Err(); err != nil {
		return err
	}
	return errors.New("stdin closed")
}

// measurePlacement times n placements (after 200 to warm up); a request
// the MO does not answer within the client's timeout is counted, not
// timed. trips are the answered ones' ids and wall clock times.
func measurePlacement(c *meta.Client, n int) (lat []time.Duration, trips []trip, failed int, err error) {
	return measurePlacementWarm(c, n, 200)
}

// measurePlacementWarm is measurePlacement after warm placements to warm
// up.
func measurePlacementWarm(c *meta.Client, n, warm int) (lat []time.Duration, trips []trip, failed int, err error) {
	req := benchRequest(nil)
	ctx := context.Background()
	for range warm {
		_, _ = c.Place(ctx, req)
	}
	lat, trips = make([]time.Duration, 0, n), make([]trip, 0, n)
	for range n {
		req.RequestID = nuid.Next()
		start := time.Now()
		var rep meta.PlacementReply
		var err error
		// A region per request, for reading an execution trace.
		trace.WithRegion(ctx, "place", func() { rep, err = c.Place(ctx, req) })
		d := time.Since(start)
		if err != nil {
			failed++
			continue
		}
		if !rep.OK() || rep.Local {
			return nil, nil, 0, fmt.Errorf("unexpected reply: %+v", rep)
		}
		lat = append(lat, d)
		trips = append(trips, trip{ID: req.RequestID, Sent: start.UnixNano(), Recv: start.Add(d).UnixNano()})
	}
	if len(lat) == 0 {
		return nil, nil, failed, fmt.Errorf("no placement answered of %d", n)
	}
	return lat, trips, failed, nil
}
