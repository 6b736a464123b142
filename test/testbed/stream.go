package testbed

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/netns"
)

// Sample is one request of a Stream.
type Sample struct {
	Sent    time.Time     `json:"sent"`
	Latency time.Duration `json:"latency_ns"`
	OK      bool          `json:"ok"`
	// Cluster is who answered (the demo service says "cluster <id>").
	Cluster string `json:"cluster,omitempty"`
	Err     string `json:"err,omitempty"`
	Phase   string `json:"phase,omitempty"`
}

// Stream is the paper's streaming client: from a client namespace it sends
// an HTTP GET to url every interval, each on a new connection (a new flow,
// so it follows the frontend's current target), and records every answer.
type Stream struct {
	mu      sync.Mutex
	samples []Sample
	phase   string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	done    chan struct{}
}

// StartStream begins sending; Stop ends it. timeout bounds each request.
func StartStream(ctx context.Context, ns, url string, interval, timeout time.Duration) *Stream {
	ctx, cancel := context.WithCancel(ctx)
	s := &Stream{cancel: cancel, done: make(chan struct{})}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netns.Dial(ctx, ns, network, addr)
		},
		DisableKeepAlives: true,
	}
	hc := &http.Client{Transport: tr, Timeout: timeout}
	go func() {
		defer close(s.done)
		load.OpenLoop(ctx, interval, 256, &s.wg, func(sent time.Time) {
			s.add(Sample{Sent: sent, Err: "client overloaded: too many requests in flight"})
		}, func(time.Time) {
			s.mu.Lock()
			ph := s.phase
			s.mu.Unlock()
			smp := get(ctx, hc, url)
			if ctx.Err() != nil && !smp.OK {
				return // stopped mid-request: not a failure of the service
			}
			smp.Phase = ph
			s.add(smp)
		})
		s.wg.Wait()
		tr.CloseIdleConnections()
	}()
	return s
}

func get(ctx context.Context, hc *http.Client, url string) Sample {
	start := time.Now()
	smp := Sample{Sent: start}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		smp.Err = err.Error()
		return smp
	}
	resp, err := hc.Do(req)
	if err != nil {
		smp.Err = err.Error()
		smp.Latency = time.Since(start)
		return smp
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	smp.Latency = time.Since(start)
	if err != nil {
		smp.Err = "read body: " + err.Error()
		return smp
	}
	if resp.StatusCode != http.StatusOK {
		smp.Err = "status " + resp.Status
		return smp
	}
	smp.OK = true
	smp.Cluster = load.ServedBy(string(body))
	return smp
}

func (s *Stream) add(smp Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if smp.Phase == "" {
		smp.Phase = s.phase
	}
	s.samples = append(s.samples, smp)
}

// SetPhase labels the requests sent from now on.
func (s *Stream) SetPhase(p string) {
	s.mu.Lock()
	s.phase = p
	s.mu.Unlock()
}

// Samples returns a copy of what was recorded so far (in completion order).
func (s *Stream) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Sample(nil), s.samples...)
}

// Stop ends the stream, waits for requests in flight, and returns every
// sample.
func (s *Stream) Stop() []Sample {
	s.cancel()
	<-s.done
	return s.Samples()
}

// WaitServedBy waits until n consecutive requests sent after now were
// answered by cluster, or ctx ends.
func (s *Stream) WaitServedBy(ctx context.Context, cluster string, n int) error {
	from := time.Now()
	for {
		s.mu.Lock()
		run := 0
		for _, smp := range s.samples {
			if smp.Sent.Before(from) {
				continue
			}
			if smp.OK && smp.Cluster == cluster {
				run++
			} else {
				run = 0
			}
		}
		s.mu.Unlock()
		if run >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
