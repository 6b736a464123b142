package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/roamnet/roam/meta"
)

// A cluster the simulator plays: its hello in two variants, pre-encoded
// around its seq so the simulator does not spend the CPU the MO is
// measured on re-encoding it, and its own sequence. The variants differ
// in the services count (which no placement reads) and alternate every
// changeEvery hellos, so one hello in changeEvery differs from the
// cluster's previous one and the MO decodes it in full; the others differ
// only in seq and take the MO's fast path.
type simCluster struct {
	subject       string
	before, after [2][]byte
	seq           uint64
}

const changeEvery = 10

func newSimCluster(h meta.Hello) *simCluster {
	c := &simCluster{subject: meta.HelloSubject(h.ClusterID)}
	h.Version, h.Seq = meta.Version, 1
	for v := range 2 {
		h.Services += v
		b, _ := json.Marshal(h)
		k := bytes.Index(b, []byte(`"seq":1,`)) + len(`"seq":`)
		c.before[v], c.after[v] = b[:k:k], b[k+1:]
	}
	return c
}

// next is the cluster's next hello.
func (c *simCluster) next(buf []byte) []byte {
	c.seq++
	v := c.seq / changeEvery % 2
	buf = append(buf[:0], c.before[v]...)
	buf = strconv.AppendUint(buf, c.seq, 10)
	return append(buf, c.after[v]...)
}

func clusterID(i int) string { return "sim-" + strconv.Itoa(i) }

// simHello is cluster i of a fleet of n: a third of each tier, loads
// spread, a link to the next cluster. One incarnation per bench run.
func simHello(i, n int, interval time.Duration) meta.Hello {
	return meta.Hello{
		ClusterID: clusterID(i), Incarnation: incarnation, Tier: []string{meta.TierEdge, meta.TierCloud, meta.TierDeepEdge}[i%3],
		Labels:        map[string]string{"zone": "z" + strconv.Itoa(i%10), "role": "sim"},
		ControllerURL: "http://10." + strconv.Itoa(i>>16) + "." + strconv.Itoa((i>>8)&255) + "." + strconv.Itoa(i&255) + ":8080",
		DataAddrs:     []netip.Addr{netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})},
		// Large enough that the thousands of placements measured, each
		// reserved at its destination for a minute, do not fill a fleet
		// of 10.
		Capacity: meta.Capacity{MilliCPU: 16000 << 8, UsedMilliCPU: int64(i*37) % 15000 << 8, MemoryMB: 65536 << 8,
			UsedMemoryMB: int64(i*101) % 60000 << 8, Pods: 110 << 8, UsedPods: int64(i%100) << 8},
		Services:   i % 20,
		Links:      []meta.Link{{Peer: clusterID((i + 1) % n), BandwidthMbps: 1000, RTTMs: 5, Up: true}},
		IntervalMs: interval.Milliseconds(),
	}
}

var incarnation = nuid.Next()

// simulator keeps a fleet of clusters alive: each sends one hello per
// interval, in turn, so the fleet's hellos are spread evenly over time in
// slices of helloSlice (at 10,000 clusters and 1 s, 10 hellos every
// millisecond). Real clusters send from machines of their own, each at
// its own phase of the interval, so their hellos reach the MO spread out
// like this rather than in bursts. What a slice owes is computed from the
// time elapsed, so a late slice (a busy machine) sends more and every
// cluster keeps its interval.
// helloSlice is how often the simulator sends the hellos due (-hello-slice).
var helloSlice = time.Millisecond

type simulator struct {
	nc       *nats.Conn
	mu       sync.Mutex
	clusters []*simCluster
	interval time.Duration
	paused   bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newSimulator(nc *nats.Conn) *simulator {
	ctx, cancel := context.WithCancel(context.Background())
	s := &simulator{nc: nc, cancel: cancel, interval: time.Second}
	s.wg.Add(1)
	go s.loop(ctx)
	return s
}

// set replaces the fleet with hs (hellos every interval) and registers
// them all at once; clusters already played keep their sequence.
func (s *simulator) set(hs []meta.Hello, interval time.Duration) {
	s.mu.Lock()
	old := map[string]*simCluster{}
	for _, c := range s.clusters {
		old[c.subject] = c
	}
	cs := make([]*simCluster, len(hs))
	for i, h := range hs {
		c := newSimCluster(h)
		if o := old[c.subject]; o != nil {
			c.seq = o.seq
		}
		cs[i] = c
	}
	s.clusters, s.interval = cs, interval
	s.mu.Unlock()
	// Register them at 20,000 a second at most.
	var buf []byte
	for i, c := range cs {
		s.mu.Lock()
		buf = c.next(buf)
		_ = s.nc.Publish(c.subject, buf)
		s.mu.Unlock()
		if i%5000 == 4999 {
			_ = s.nc.Flush()
			time.Sleep(250 * time.Millisecond)
		}
	}
	_ = s.nc.Flush()
}

func (s *simulator) loop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(helloSlice)
	defer t.Stop()
	next := 0
	var buf []byte
	var owed float64
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		elapsed := now.Sub(last)
		last = now
		s.mu.Lock()
		if n := len(s.clusters); n > 0 && !s.paused {
			owed += float64(n) * float64(elapsed) / float64(s.interval)
			for ; owed >= 1; owed-- {
				c := s.clusters[next%n]
				buf = c.next(buf)
				_ = s.nc.Publish(c.subject, buf)
				next++
			}
		}
		s.mu.Unlock()
	}
}

// pause stops (or resumes) the steady hellos.
func (s *simulator) pause(p bool) {
	s.mu.Lock()
	s.paused = p
	s.mu.Unlock()
}

// flood publishes total hellos at once, cycling through the first
// clusters of the fleet.
func (s *simulator) flood(total, clusters int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(clusters, len(s.clusters))
	var buf []byte
	for i := range total {
		c := s.clusters[i%n]
		buf = c.next(buf)
		if err := s.nc.Publish(c.subject, buf); err != nil {
			return err
		}
	}
	return s.nc.Flush()
}

func (s *simulator) stop() {
	s.cancel()
	s.wg.Wait()
}
