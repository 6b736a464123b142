// Command meta benchmarks roam's meta-orchestrator on loopback: placement
// round trip p50/p99 with 10, 1,000 and 10,000 registered clusters sending
// hellos at 1 Hz, and the hello ingest rate the MO's single hello handler
// sustains. It prints a table, and as its last line one JSON object.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-meta:", err)
		os.Exit(1)
	}
}

func run() error {
	requests := flag.Int("requests", 3000, "placement requests measured per cluster count")
	ingest := flag.Int("ingest", 200000, "hellos published for the ingest measurement")
	flag.Parse()

	srv, err := meta.NewServer(meta.ServerConfig{Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer srv.Close()

	pubConn, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return fmt.Errorf("connect publisher: %w", err)
	}
	defer pubConn.Close()
	reqConn, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return fmt.Errorf("connect requester: %w", err)
	}
	defer reqConn.Close()
	client, err := meta.NewClient(reqConn, "bench-requester", meta.WithTimeout(5*time.Second), meta.WithRetries(0), meta.WithoutCache(),
		meta.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return err
	}
	defer client.Close()

	type row struct {
		clusters int
		p50, p99 time.Duration
		mean     time.Duration
	}
	var rows []row
	sim := newSimulator(pubConn)
	defer sim.stop()
	for _, n := range []int{10, 1000, 10000} {
		sim.setClusters(n)
		deadline := time.Now().Add(60 * time.Second)
		for srv.Registry().Counts(time.Now())[meta.StateAlive] < n {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d clusters alive after 60s", srv.Registry().Counts(time.Now())[meta.StateAlive], n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		lat, err := measurePlacement(client, *requests)
		if err != nil {
			return err
		}
		r := row{clusters: n, p50: pct(lat, 50), p99: pct(lat, 99), mean: mean(lat)}
		rows = append(rows, r)
		fmt.Fprintf(os.Stderr, "measured %d clusters\n", n)
	}
	sim.stop()

	rate, err := measureIngest(srv, pubConn, *ingest)
	if err != nil {
		return err
	}
	decodeRate := measureDecode()

	fmt.Println("roam meta-orchestrator on loopback (embedded NATS, least-loaded policy; requester without hello cache)")
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("machine load average (other work shares these cores): %s", la)
	}
	fmt.Printf("%-10s %10s %10s %10s %10s\n", "clusters", "p50 µs", "p99 µs", "mean µs", "goal p99")
	for _, r := range rows {
		fmt.Printf("%-10d %10.0f %10.0f %10.0f %10s\n", r.clusters, us(r.p50), us(r.p99), us(r.mean), "<1000 µs")
	}
	fmt.Printf("paper's placement request: 3000 µs; ours at 10000 clusters: p50 %.0f µs (paper/ours %.2f), p99 %.0f µs (paper/ours %.2f)\n",
		us(rows[2].p50), 3000/us(rows[2].p50), us(rows[2].p99), 3000/us(rows[2].p99))
	fmt.Printf("hello ingest over NATS (one handler goroutine): %.0f hellos/s\n", rate)
	fmt.Printf("hello decode+register in-process, one core:      %.0f hellos/s\n", decodeRate)

	out := map[string]float64{"hellos_per_s": round(rate), "hello_decode_per_s": round(decodeRate)}
	for _, r := range rows {
		out["pr_p50_us_"+strconv.Itoa(r.clusters)] = round(us(r.p50))
		out["pr_p99_us_"+strconv.Itoa(r.clusters)] = round(us(r.p99))
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return nil
}

// simulator publishes one hello per cluster per second, spread evenly.
type simulator struct {
	nc     *nats.Conn
	mu     sync.Mutex
	n      int
	seq    uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newSimulator(nc *nats.Conn) *simulator {
	ctx, cancel := context.WithCancel(context.Background())
	s := &simulator{nc: nc, cancel: cancel, seq: meta.NewSeq()}
	s.wg.Add(1)
	go s.loop(ctx)
	return s
}

func (s *simulator) setClusters(n int) {
	s.mu.Lock()
	s.n = n
	s.mu.Unlock()
	// Register them all at once; the loop then keeps 1 Hz.
	for i := range n {
		s.publish(i)
	}
	_ = s.nc.Flush()
}

func clusterID(i int) string { return "sim-" + strconv.Itoa(i) }

func hello(i int, seq uint64) meta.Hello {
	return meta.Hello{
		Version: meta.Version, ClusterID: clusterID(i), Seq: seq, Tier: []string{meta.TierEdge, meta.TierCloud, meta.TierDeepEdge}[i%3],
		Labels:        map[string]string{"zone": "z" + strconv.Itoa(i%10)},
		ControllerURL: "http://10.1." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250) + ":8080",
		DataAddrs:     []netip.Addr{netip.AddrFrom4([4]byte{10, 2, byte(i / 250), byte(i % 250)})},
		Capacity: meta.Capacity{MilliCPU: 16000, UsedMilliCPU: int64(i*37) % 15000, MemoryMB: 65536,
			UsedMemoryMB: int64(i*101) % 60000, Pods: 110, UsedPods: int64(i % 100)},
		Services: i % 20,
		Links:    []meta.Link{{Peer: clusterID((i + 1) % 10000), BandwidthMbps: 1000, RTTMs: 5, Up: true}},
	}
}

// encoded is a cluster's hello JSON split around its seq value, so the
// simulator does not spend the CPU the MO is measured on re-encoding it.
type encoded struct {
	subject       string
	before, after []byte
}

var (
	encMu    sync.Mutex
	encCache = map[int]*encoded{}
)

func encode(i int) *encoded {
	encMu.Lock()
	defer encMu.Unlock()
	if e, ok := encCache[i]; ok {
		return e
	}
	b, _ := json.Marshal(hello(i, 1))
	k := bytes.Index(b, []byte(`"seq":1,`)) + len(`"seq":`)
	e := &encoded{subject: meta.HelloSubject(clusterID(i)), before: b[:k:k], after: b[k+1:]}
	encCache[i] = e
	return e
}

func (e *encoded) with(buf []byte, seq uint64) []byte {
	buf = append(buf[:0], e.before...)
	buf = strconv.AppendUint(buf, seq, 10)
	return append(buf, e.after...)
}

func (s *simulator) publish(i int) {
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	e := encode(i)
	_ = s.nc.Publish(e.subject, e.with(nil, seq))
}

func (s *simulator) loop(ctx context.Context) {
	defer s.wg.Done()
	const tick = 10 * time.Millisecond // 100 slices per second
	t := time.NewTicker(tick)
	defer t.Stop()
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		n := s.n
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		per := (n + 99) / 100
		for range per {
			s.publish(next % n)
			next++
		}
	}
}

func (s *simulator) stop() {
	s.cancel()
	s.wg.Wait()
}

func measurePlacement(c *meta.Client, n int) ([]time.Duration, error) {
	req := meta.PlacementRequest{
		Home: "bench-requester", Reason: meta.ReasonLackOfResources,
		Service: meta.ServiceDescriptor{Name: "web", Ports: []meta.Port{{Port: 80, Protocol: lb.TCP}},
			Resources: meta.Resources{MilliCPU: 250, MemoryMB: 128}},
	}
	ctx := context.Background()
	for range 200 { // warm up
		if _, err := c.Place(ctx, req); err != nil {
			return nil, err
		}
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		rep, err := c.Place(ctx, req)
		d := time.Since(start)
		if err != nil {
			return nil, err
		}
		if !rep.OK() || rep.Local {
			return nil, fmt.Errorf("unexpected reply: %+v", rep)
		}
		lat = append(lat, d)
	}
	return lat, nil
}

// measureIngest floods the MO with hellos from 10,000 known clusters and
// times how long its hello handler takes to take them all in.
func measureIngest(srv *meta.Server, nc *nats.Conn, total int) (float64, error) {
	base := seenHellos(srv)
	seq := meta.NewSeq() + 1<<40
	var buf []byte
	start := time.Now()
	for i := range total {
		e := encode(i % 10000)
		seq++
		buf = e.with(buf, seq)
		if err := nc.Publish(e.subject, buf); err != nil {
			return 0, fmt.Errorf("publish hello: %w", err)
		}
	}
	if err := nc.Flush(); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(90 * time.Second)
	for seenHellos(srv)-base < float64(total) {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("MO took in %.0f of %d hellos in 90s", seenHellos(srv)-base, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

func seenHellos(srv *meta.Server) float64 {
	mfs, err := srv.Gatherer().Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "roam_meta_hellos_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// measureDecode is the in-process cost of decoding and registering a hello.
func measureDecode() float64 {
	const n = 200000
	bufs := make([][]byte, 1000)
	for i := range bufs {
		bufs[i], _ = json.Marshal(hello(i, uint64(i+1)))
	}
	reg := meta.NewRegistry(time.Second, 3)
	start := time.Now()
	for i := range n {
		h, err := meta.DecodeHello(bufs[i%len(bufs)])
		if err != nil {
			panic(err)
		}
		h.Seq = uint64(i + 1)
		reg.Observe(h, start)
	}
	return n / time.Since(start).Seconds()
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
