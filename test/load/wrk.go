package load

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Wrk runs wrk (https://github.com/wg/wrk), the HTTP benchmark whose
// persistent connections the numbers came from: it keeps every
// connection busy back to back, reconnects when an answer says
// "Connection: close", and counts a connection closed under a request as a
// read error (it never retries).
type Wrk struct {
	URL      string
	Threads  int           // default 2
	Conns    int           // default 8
	Duration time.Duration // default 10s
	// Header is added to every request (e.g. "Connection: close": then
	// every request is a new connection, the highest rate of new flows
	// this machine's client can make).
	Header string
	// Timeout is wrk's per-request timeout (default 2s).
	Timeout time.Duration
	// Command builds the process (default exec.CommandContext); the
	// testbed passes netns.Cmd for a client's namespace.
	Command func(ctx context.Context, prog string, args ...string) *exec.Cmd
}

// WrkResult is what wrk printed.
type WrkResult struct {
	Requests                               int
	Duration                               time.Duration
	ConnectErrors, ReadErrors, WriteErrors int
	Timeouts, Non2xx                       int
	P50, P99                               time.Duration
	RequestsPerSec                         float64
	Output                                 string // wrk's own output
	Command                                string // the command line run
}

// Errors is every error wrk counted (socket errors, timeouts, non-2xx).
func (r WrkResult) Errors() int {
	return r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.Timeouts + r.Non2xx
}

// Args is wrk's command line (without the program name).
func (w Wrk) Args() []string {
	threads, conns, d, to := w.Threads, w.Conns, w.Duration, w.Timeout
	if threads <= 0 {
		threads = 2
	}
	if conns <= 0 {
		conns = 8
	}
	threads = min(threads, conns)
	if d <= 0 {
		d = 10 * time.Second
	}
	if to <= 0 {
		to = 2 * time.Second
	}
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns),
		"-d" + strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s", "--timeout", strconv.Itoa(int(max(time.Second, to).Round(time.Second)/time.Second)) + "s", "--latency"}
	if w.Header != "" {
		args = append(args, "-H", w.Header)
	}
	return append(args, w.URL)
}

// Run runs wrk to the end (or until ctx ends) and parses its output.
func (w Wrk) Run(ctx context.Context) (WrkResult, error) {
	r, err := w.Start(ctx)
	if err != nil {
		return WrkResult{}, err
	}
	return r.wait()
}

// WrkRun is a wrk started by Start.
type WrkRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	line string
}

// Start starts wrk; Stop ends it early, or Wait for Duration.
func (w Wrk) Start(ctx context.Context) (*WrkRun, error) {
	command := w.Command
	if command == nil {
		command = exec.CommandContext
	}
	args := w.Args()
	r := &WrkRun{cmd: command(ctx, "wrk", args...), line: "wrk " + strings.Join(args, " ")}
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", r.line, err)
	}
	return r, nil
}

// Stop interrupts wrk (SIGINT: it stops and prints what it measured so
// far) and parses its output.
func (r *WrkRun) Stop() (WrkResult, error) {
	// wrk ignores SIGINT until its threads run: repeat it until it exits.
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			if i < 50 {
				_ = r.cmd.Process.Signal(os.Interrupt)
			} else {
				_ = r.cmd.Process.Kill()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	defer close(done)
	return r.wait()
}

func (r *WrkRun) wait() (WrkResult, error) {
	err := r.cmd.Wait()
	out := r.out.String()
	if err != nil {
		return WrkResult{Output: out, Command: r.line}, fmt.Errorf("run %s: %w: %s", r.line, err, strings.TrimSpace(out))
	}
	res, err := ParseWrk(out)
	res.Command = r.line
	return res, err
}

var (
	reWrkTotal   = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m|h),`)
	reWrkSocket  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reWrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reWrkRate    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reWrkPercent = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
)

func wrkDuration(v, unit string) time.Duration {
	f, _ := strconv.ParseFloat(v, 64)
	mult := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	return time.Duration(f * float64(mult))
}

// ParseWrk reads wrk's output (run with --latency for the percentiles).
func ParseWrk(out string) (WrkResult, error) {
	r := WrkResult{Output: out}
	m := reWrkTotal.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("parse wrk output: no \"N requests in\" line: %q", out)
	}
	r.Requests, _ = strconv.Atoi(m[1])
	r.Duration = wrkDuration(m[2], m[3])
	if m := reWrkSocket.FindStringSubmatch(out); m != nil {
		r.ConnectErrors, _ = strconv.Atoi(m[1])
		r.ReadErrors, _ = strconv.Atoi(m[2])
		r.WriteErrors, _ = strconv.Atoi(m[3])
		r.Timeouts, _ = strconv.Atoi(m[4])
	}
	if m := reWrkNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.Atoi(m[1])
	}
	if m := reWrkRate.FindStringSubmatch(out); m != nil {
		r.RequestsPerSec, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range reWrkPercent.FindAllStringSubmatch(out, -1) {
		d := wrkDuration(m[2], m[3])
		if m[1] == "50" {
			r.P50 = d
		} else {
			r.P99 = d
		}
	}
	return r, nil
}
