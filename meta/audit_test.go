package meta

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// TestMain runs the audit crash test's MO replica when the test binary is
// started as one (auditHelperEnv set): a process of its own, so that the
// test can kill it with SIGKILL.
func TestMain(m *testing.M) {
	if v := os.Getenv(auditHelperEnv); v != "" {
		os.Exit(runAuditHelper(v))
	}
	os.Exit(m.Run())
}

const auditHelperEnv = "ROAM_META_AUDIT_HELPER"

// runAuditHelper serves placements from an MO replica on the NATS and
// spool given in v ("url,spool"), says "serving" on stdout and runs until
// it is killed.
func runAuditHelper(v string) int {
	url, spool, _ := strings.Cut(v, ",")
	s, err := NewServer(ServerConfig{NATSURL: url, AuditSpool: spool, AuditFlush: 300 * time.Millisecond,
		Name: "crash", WarmUp: 300 * time.Millisecond, HelloInterval: 200 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.WaitServing(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("serving")
	select {}
}

func TestAuditRecordEncoding(t *testing.T) {
	at := time.Date(2026, 11, 24, 23, 1, 2, 345678900, time.UTC)
	for _, rec := range []auditRecord{
		{At: at, RequestID: "r1", Requester: "a", Home: "b", Service: "svc", Reason: ReasonManual, DecidedBy: "mo-1"},
		{At: at, RequestID: `r"<2>&`, Requester: "a", Home: "a", Service: "s\u2028", Reason: ReasonLackOfResources,
			Destination: "c9", DecidedBy: "mo", Resources: Resources{MilliCPU: 250, MemoryMB: 64}, ReserveUntil: at.Add(time.Minute)},
		{At: at, RequestID: "r3", Requester: "a", Home: "b", Service: "svc", Reason: ReasonManual, Destination: "c1",
			Resources: Resources{MemoryMB: 64}, ReserveUntil: at, DecidedBy: "mo"},
		{At: at, RequestID: "r4", Requester: "a", Home: "b", Service: "svc", Reason: ReasonManual, NoPlacement: "nothing fits",
			Filtered: 12, DecidedBy: "mo", Resources: Resources{MilliCPU: 1}},
	} {
		want, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendAuditRecord(nil, &rec); string(got) != string(want)+"\n" {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	}
}

// auditRecords reads every record of the audit stream: request id ->
// how many times, and how many messages held them.
func auditRecords(t *testing.T, nc *nats.Conn) (map[string]int, int) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(c, AuditStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(c, AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(c)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	msgs := 0
	for range info.State.Msgs {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read the audit stream: %v", err)
		}
		msgs++
		if err := decodeAuditBatch(m.Data(), func(r *auditRecord) { ids[r.RequestID]++ }); err != nil {
			t.Fatalf("audit batch: %v", err)
		}
	}
	return ids, msgs
}

// placeMany places n requests from conc requesters and returns the ids
// answered with a destination.
func placeMany(t *testing.T, c *Client, prefix string, n, conc int) []string {
	t.Helper()
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for g := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n; i += conc {
				req := testRequest(c.ClusterID(), Constraints{})
				req.RequestID = prefix + "-" + strconv.Itoa(i)
				rep, err := c.Place(context.Background(), req)
				if err != nil || !rep.OK() || rep.Local {
					t.Errorf("placement %s: %v %+v", req.RequestID, err, rep)
					continue
				}
				mu.Lock()
				ids = append(ids, req.RequestID)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ids
}

func auditClusters(t *testing.T, nc *nats.Conn, n int) []Hello {
	var hs []Hello
	for i := range n {
		h := testHello("c"+strconv.Itoa(i), TierEdge, 1<<30, 0)
		h.Capacity.Pods, h.Capacity.MemoryMB = 1<<30, 1<<30
		hs = append(hs, h)
	}
	publishHellos(t, nc, hs...)
	return hs
}

// auditedOnce: spooled records prefix-0 .. prefix-(n-1) each have one
// audit record; it returns how many messages the stream holds.
func auditedOnce(t *testing.T, nc *nats.Conn, prefix string, n int) int {
	t.Helper()
	got, msgs := auditRecords(t, nc)
	for i := range n {
		if id := prefix + "-" + strconv.Itoa(i); got[id] != 1 {
			t.Fatalf("spooled record %s has %d audit records", id, got[id])
		}
	}
	return msgs
}

// placeAcked places n requests (ids prefix-i, 4 at a time) and waits
// until s has every audit record acknowledged.
func placeAcked(t *testing.T, s *Server, c *Client, prefix string, n int) []string {
	t.Helper()
	ids := placeMany(t, c, prefix, n, 4)
	waitFor(t, "acknowledged", func() bool { return s.auditLog.pendingRecords() == 0 })
	return ids
}

// auditReady publishes 10 clusters' hellos on nc, waits until s knows
// them, and returns a requester without a cache (each placement asks s).
func auditReady(t *testing.T, s *Server, nc *nats.Conn) *Client {
	t.Helper()
	auditClusters(t, nc, 10)
	waitFor(t, "clusters", func() bool { return s.Registry().Len() == 10 })
	return newClient(t, nc, "req", WithoutCache())
}

func spoolSegments(t *testing.T, dir string) (files int, ids map[string]bool) {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "*"+spoolSuffix))
	ids = map[string]bool{}
	for _, p := range names {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 {
			files++
		}
		_ = decodeAuditBatch(b, func(r *auditRecord) { ids[r.RequestID] = true })
	}
	return files, ids
}

// TestAuditBatched: every answered placement has exactly one record in
// the audit stream, records travel in batches (fewer messages than
// records), the replica does not apply its own batches again, and the
// spool is empty once every batch is acknowledged.
func TestAuditBatched(t *testing.T) {
	spool := t.TempDir()
	s := startServer(t, ServerConfig{AuditSpool: spool, HelloInterval: time.Minute})
	nc := connect(t, s.ClientURL())
	c := auditReady(t, s, nc)
	ids := placeMany(t, c, "b", 400, 8)
	if len(ids) != 400 {
		t.Fatalf("%d of 400 placed", len(ids))
	}
	waitFor(t, "every batch acknowledged", func() bool { return s.auditLog.pendingRecords() == 0 })
	got, msgs := auditRecords(t, nc)
	for _, id := range ids {
		if got[id] != 1 {
			t.Fatalf("request %s has %d audit records", id, got[id])
		}
	}
	if len(got) != len(ids) {
		t.Fatalf("%d records for %d placements", len(got), len(ids))
	}
	if msgs >= len(ids) {
		t.Fatalf("%d messages for %d records: not batched", msgs, len(ids))
	}
	if files, _ := spoolSegments(t, spool); files != 0 {
		t.Fatalf("%d spool segments left after every ack", files)
	}
	if n := s.Registry().Reservations(); n != len(ids) {
		t.Fatalf("%d reservations, want %d (own batches applied again or lost)", n, len(ids))
	}
	t.Logf("%d records in %d messages", len(ids), msgs)
}

// TestAuditPublishRefused: the audit stream refuses appends for a while
// (full, discard new); placements are still answered, their batches are
// published again until the stream takes them, and none is lost or
// doubled.
func TestAuditPublishRefused(t *testing.T) {
	s := startServer(t, ServerConfig{AuditSpool: t.TempDir(), HelloInterval: time.Minute})
	nc := connect(t, s.ClientURL())
	c := auditReady(t, s, nc)
	before := placeAcked(t, s, c, "before", 50)

	resume := refuseAuditAppends(t, nc)
	during := placeMany(t, c, "during", 100, 4)
	waitFor(t, "refused batches published again", func() bool {
		s.auditLog.mu.Lock()
		defer s.auditLog.mu.Unlock()
		return s.auditLog.retried >= 3
	})
	if p := s.auditLog.pendingRecords(); p != len(during) {
		t.Fatalf("%d records pending while the stream refuses, want %d", p, len(during))
	}
	resume()
	waitFor(t, "acknowledged after the stream takes appends again", func() bool { return s.auditLog.pendingRecords() == 0 })
	got, _ := auditRecords(t, nc)
	for _, id := range append(before, during...) {
		if got[id] != 1 {
			t.Fatalf("request %s has %d audit records", id, got[id])
		}
	}
}

// TestAuditNATSDown: the NATS server (external, file storage) goes down
// with records answered but not yet acknowledged (a 1 s batch), and comes
// back on the same port and store: the replica publishes them again and
// every one is in the stream, once.
func TestAuditNATSDown(t *testing.T) {
	dir := t.TempDir()
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true, JetStream: true, StoreDir: dir}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	url := ns.ClientURL()
	s := startServer(t, ServerConfig{NATSURL: url, AuditSpool: t.TempDir(), AuditFlush: time.Second, HelloInterval: time.Minute})
	nc := connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	c := auditReady(t, s, nc)
	ids := placeMany(t, c, "down", 60, 4)
	if p := s.auditLog.pendingRecords(); p == 0 {
		t.Fatal("nothing pending before the server goes down: the test proves nothing")
	}
	opts2 := *opts
	opts2.Port = ns.Addr().(*net.TCPAddr).Port
	ns.Shutdown()
	ns.WaitForShutdown()
	time.Sleep(500 * time.Millisecond)
	ns2, err := server.NewServer(&opts2)
	if err != nil {
		t.Fatal(err)
	}
	go ns2.Start()
	if !ns2.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready again")
	}
	t.Cleanup(func() { s.Close(); ns2.Shutdown(); ns2.WaitForShutdown() })
	waitFor(t, "acknowledged after the server is back", func() bool { return s.auditLog.pendingRecords() == 0 })
	got, _ := auditRecords(t, nc)
	for _, id := range ids {
		if got[id] != 1 {
			t.Fatalf("request %s has %d audit records", id, got[id])
		}
	}
}

// TestAuditSurvivesKill: a replica in a process of its own is killed with
// SIGKILL under a steady placement load, with a batch open (300 ms). The
// placements it answered whose records the stream lacks are in its spool;
// started again on the spool, it publishes them before it serves: then
// every answered placement has its record, once.
func TestAuditSurvivesKill(t *testing.T) {
	ns := startNATS(t)
	spool := t.TempDir()
	nc := connect(t, ns.ClientURL(), nats.MaxReconnects(-1))
	hs := auditClusters(t, nc, 10)
	defer keepHelloing(nc, 100*time.Millisecond, 10, hs...)()

	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), auditHelperEnv+"="+ns.ClientURL()+","+spool)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "serving\n" {
			t.Fatalf("replica process: %q %v", line, err)
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
		return cmd
	}
	replica := start()
	c := newClient(t, nc, "req", WithoutCache(), WithTimeout(time.Second), WithRetries(0))
	var answered []string
	var failed int
	killAt := time.Now().Add(time.Second)
	killed := false
	for i := 0; ; i++ {
		if !killed && time.Now().After(killAt) {
			if err := replica.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = replica.Wait()
			killed = true
			break
		}
		req := testRequest("req", Constraints{})
		req.RequestID = "k-" + strconv.Itoa(i)
		rep, err := c.Place(context.Background(), req)
		if err != nil || !rep.OK() {
			failed++
			continue
		}
		answered = append(answered, req.RequestID)
	}
	if len(answered) < 50 {
		t.Fatalf("only %d placements answered before the kill (%d failed)", len(answered), failed)
	}
	got, _ := auditRecords(t, nc)
	_, spooled := spoolSegments(t, spool)
	var missing int
	for _, id := range answered {
		if got[id] == 0 {
			missing++
			if !spooled[id] {
				t.Fatalf("answered placement %s is neither in the audit stream nor in the spool", id)
			}
		}
	}
	if missing == 0 {
		t.Fatal("every record was acknowledged before the kill: the test proves nothing")
	}
	start()
	got, _ = auditRecords(t, nc)
	for _, id := range answered {
		if got[id] != 1 {
			t.Fatalf("answered placement %s has %d audit records after the restart", id, got[id])
		}
	}
	t.Logf("%d placements answered before SIGKILL, %d of their records recovered from the spool", len(answered), missing)
}

// startSmallNATS starts a NATS server with JetStream whose max_payload is
// maxPayload (0: the server's default).
func startSmallNATS(t testing.TB, maxPayload int32) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(), MaxPayload: maxPayload})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// TestAuditStallSmallPayload: on a NATS server with a 16 KiB max_payload
// the audit stream refuses appends (full, discard new) while placements
// go on, far more bytes than one message may carry: batches are sealed
// at their size and queue behind the full window (none is ever too large
// to publish), and once the stream takes appends again every record
// lands exactly once and placements go on.
func TestAuditStallSmallPayload(t *testing.T) {
	const maxPayload = 16 << 10
	ns := startSmallNATS(t, maxPayload)
	s := startServer(t, ServerConfig{NATSURL: ns.ClientURL(), AuditSpool: t.TempDir(), HelloInterval: time.Minute})
	if b := s.auditLog.batchBytes(); b != maxPayload/2 {
		t.Fatalf("batch size %d, want half the max payload (%d)", b, maxPayload/2)
	}
	nc := connect(t, ns.ClientURL())
	c := auditReady(t, s, nc)
	before := placeAcked(t, s, c, "before", 20)

	resume := refuseAuditAppends(t, nc)
	during := placeMany(t, c, "during", 400, 4)
	if len(during) != 400 {
		t.Fatalf("%d of 400 placed while the stream refuses", len(during))
	}
	s.auditLog.mu.Lock()
	pendingB := s.auditLog.pendingB
	s.auditLog.mu.Unlock()
	if pendingB < 2*maxPayload {
		t.Fatalf("only %d bytes pending while the stream refuses: the test proves nothing", pendingB)
	}
	resume()
	waitFor(t, "acknowledged after the stream takes appends again", func() bool { return s.auditLog.pendingRecords() == 0 })
	after := placeMany(t, c, "after", 20, 4)
	if len(after) != 20 {
		t.Fatalf("%d of 20 placed after the stall", len(after))
	}
	waitFor(t, "acknowledged", func() bool { return s.auditLog.pendingRecords() == 0 })
	got, msgs := auditRecords(t, nc)
	for _, id := range slices.Concat(before, during, after) {
		if got[id] != 1 {
			t.Fatalf("request %s has %d audit records", id, got[id])
		}
	}
	s.auditLog.mu.Lock()
	defer s.auditLog.mu.Unlock()
	if s.auditLog.dropped != 0 || s.auditLog.pendingB != 0 || s.auditLog.split != 0 {
		t.Fatalf("dropped %d records, %d bytes still counted pending, %d batches too large to publish (not sealed at their size)",
			s.auditLog.dropped, s.auditLog.pendingB, s.auditLog.split)
	}
	t.Logf("%d bytes pending at the stall's height; %d records in %d messages", pendingB, len(got), msgs)
}

// refuseAuditAppends makes the audit stream full as it stands (at most its
// current message count, new messages discarded), so every append is
// refused, and returns the function that gives the stream its config back.
func refuseAuditAppends(t *testing.T, nc *nats.Conn) (resume func()) {
	t.Helper()
	js, _ := jetstream.New(nc)
	tctx := ctx(t)
	st, err := js.Stream(tctx, AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(tctx)
	orig := info.Config
	full := orig
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := js.UpdateStream(tctx, full); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := js.UpdateStream(tctx, orig); err != nil {
			t.Fatal(err)
		}
	}
}

// spoolRecords writes a spool segment of n records (request ids
// prefix-0...) and returns its size.
func spoolRecords(t *testing.T, path, prefix string, n int) int {
	t.Helper()
	var data []byte
	for i := range n {
		data = appendAuditRecord(data, &auditRecord{At: time.Now(), RequestID: prefix + "-" + strconv.Itoa(i), Requester: "req",
			Home: "c0", Service: "svc-" + strings.Repeat("x", 200), Reason: ReasonManual, NoPlacement: "no-candidates", DecidedBy: "old"})
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return len(data)
}

// TestAuditReplayOversizedSegment: a spool segment larger than the NATS
// server's max_payload (left by a replica that ran against a larger one)
// is replayed in pieces cut at line boundaries; every record lands once,
// and a second replay of the same segment (a crash before its removal)
// adds no copy: the pieces' ids are derived from the segment's name.
func TestAuditReplayOversizedSegment(t *testing.T) {
	const maxPayload = 16 << 10
	ns := startSmallNATS(t, maxPayload)
	spool := t.TempDir()
	seg := filepath.Join(spool, "OLDWRITER-0000000000000001"+spoolSuffix)
	size := spoolRecords(t, seg, "sp", 300)
	if size <= 2*maxPayload {
		t.Fatalf("segment of %d bytes: the test proves nothing", size)
	}
	copyData, _ := os.ReadFile(seg)
	s := startServer(t, ServerConfig{NATSURL: ns.ClientURL(), AuditSpool: spool, HelloInterval: time.Minute})
	if err := s.WaitServing(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if files, _ := spoolSegments(t, spool); files != 0 {
		t.Fatalf("%d spool segments left after the replay", files)
	}
	nc := connect(t, ns.ClientURL())
	check := func() int { return auditedOnce(t, nc, "sp", 300) }
	msgs := check()
	if msgs < 3 {
		t.Fatalf("%d-byte segment in %d messages: not split", size, msgs)
	}
	// The same segment again: every piece is a duplicate.
	if err := os.WriteFile(seg, copyData, 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := s.auditLog.replay(ctx(t))
	if err != nil || n != 300 {
		t.Fatalf("replayed %d records: %v", n, err)
	}
	if again := check(); again != msgs {
		t.Fatalf("%d messages after replaying the segment again, %d before", again, msgs)
	}
}

// TestAuditSplitTooLarge: a batch larger than the connection's max
// payload (sealed under a larger one) fails with nats.ErrMaxPayload; it is
// split at line boundaries under derived ids, never sent again as is, and
// every record lands once.
func TestAuditSplitTooLarge(t *testing.T) {
	const maxPayload = 16 << 10
	ns := startSmallNATS(t, maxPayload)
	s := startServer(t, ServerConfig{NATSURL: ns.ClientURL(), HelloInterval: time.Minute})
	var data []byte
	for i := range 200 {
		data = appendAuditRecord(data, &auditRecord{At: time.Now(), RequestID: "big-" + strconv.Itoa(i), Requester: "req",
			Home: "c0", Service: "svc-" + strings.Repeat("y", 200), Reason: ReasonManual, NoPlacement: "no-candidates", DecidedBy: "x"})
	}
	if len(data) <= 2*maxPayload {
		t.Fatal("batch too small: the test proves nothing")
	}
	b := &auditBatch{id: "other-0000000000000009", writer: "other", data: data, records: 200}
	pieces := s.auditLog.send(b)
	if len(pieces) < 3 {
		t.Fatalf("%d pieces", len(pieces))
	}
	total := 0
	for i, p := range pieces {
		if p.id != b.id+"-"+strconv.Itoa(i) || len(p.data) > maxPayload/2 || p.ack == nil {
			t.Fatalf("piece %d: id %s, %d bytes, published %v", i, p.id, len(p.data), p.ack != nil)
		}
		total += p.records
		select {
		case <-p.ack.Ok():
		case err := <-p.ack.Err():
			t.Fatalf("piece %s refused: %v", p.id, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("piece %s not acknowledged", p.id)
		}
	}
	if total != 200 {
		t.Fatalf("pieces hold %d records, want 200", total)
	}
	got, _ := auditRecords(t, connect(t, ns.ClientURL()))
	for i := range 200 {
		if id := "big-" + strconv.Itoa(i); got[id] != 1 {
			t.Fatalf("record %s has %d audit records", id, got[id])
		}
	}
}

func TestSplitLines(t *testing.T) {
	data := []byte("aaaa\nbb\ncccccccc\nd\n")
	got := splitLines(data, 8)
	want := []string{"aaaa\nbb\n", "cccccccc\n", "d\n"}
	if len(got) != len(want) {
		t.Fatalf("%q", got)
	}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Fatalf("piece %d %q, want %q", i, got[i], want[i])
		}
	}
}

// limitAuditMsgSize sets the audit stream's max_msg_size, as an operator
// editing the stream under running replicas would.
func limitAuditMsgSize(t *testing.T, nc *nats.Conn, size int32) {
	t.Helper()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx(t), AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = size
	if _, err := js.UpdateStream(ctx(t), cfg); err != nil {
		t.Fatal(err)
	}
}

// TestAuditStreamMaxMsgSize: the audit stream's max_msg_size is lowered
// under a running replica (its connection's max payload is not), so the
// refusal comes on the ack, not from the connection. A batch refused so
// is cut into pieces the stream takes, never sent again as is; every
// record lands once; and later batches are sealed under the stream's
// limit (no more splits).
func TestAuditStreamMaxMsgSize(t *testing.T) {
	const maxMsg = 4 << 10
	spool := t.TempDir()
	s := startServer(t, ServerConfig{AuditSpool: spool, HelloInterval: time.Minute, AuditFlush: 500 * time.Millisecond})
	nc := connect(t, s.ClientURL())
	c := auditReady(t, s, nc)
	limitAuditMsgSize(t, nc, maxMsg)
	first := placeMany(t, c, "big", 100, 8)
	waitFor(t, "every batch acknowledged", func() bool { return s.auditLog.pendingRecords() == 0 })
	s.auditLog.mu.Lock()
	split, dropped := s.auditLog.split, s.auditLog.dropped
	s.auditLog.mu.Unlock()
	if split == 0 || dropped != 0 {
		t.Fatalf("split %d, dropped %d: want a split batch and nothing dropped", split, dropped)
	}
	second := placeMany(t, c, "after", 100, 8)
	waitFor(t, "every batch acknowledged", func() bool { return s.auditLog.pendingRecords() == 0 })
	s.auditLog.mu.Lock()
	splitAfter := s.auditLog.split
	s.auditLog.mu.Unlock()
	if splitAfter != split {
		t.Fatalf("%d more splits after the stream's limit was learned", splitAfter-split)
	}
	if b := s.auditLog.batchBytes(); b > maxMsg-auditHeaderRoom {
		t.Fatalf("batches sealed at %d bytes, over the stream's limit", b)
	}
	got, _ := auditRecords(t, nc)
	for _, id := range append(first, second...) {
		if got[id] != 1 {
			t.Fatalf("request %s has %d audit records", id, got[id])
		}
	}
	if files, _ := spoolSegments(t, spool); files != 0 {
		t.Fatalf("%d spool segments left after every ack", files)
	}
}

// TestAuditReplayStreamMaxMsgSize: a spooled segment the audit stream
// refuses as larger than its max_msg_size is replayed in pieces (not
// retried for ever, which would keep the replica from serving), each
// record once, and replaying it again adds nothing (the same pieces under
// the same ids).
func TestAuditReplayStreamMaxMsgSize(t *testing.T) {
	const maxMsg = 4 << 10
	spool := t.TempDir()
	s := startServer(t, ServerConfig{AuditSpool: spool, HelloInterval: time.Minute})
	nc := connect(t, s.ClientURL())
	limitAuditMsgSize(t, nc, maxMsg)
	seg := filepath.Join(spool, "OLDWRITER-0000000000000001"+spoolSuffix)
	size := spoolRecords(t, seg, "rs", 40)
	if size <= 2*maxMsg || size > s.auditLog.batchBytes() {
		t.Fatalf("segment of %d bytes: the test proves nothing", size)
	}
	data, _ := os.ReadFile(seg)
	check := func() int { return auditedOnce(t, nc, "rs", 40) }
	rctx, cancel := context.WithTimeout(ctx(t), 20*time.Second)
	defer cancel()
	if n, err := s.auditLog.replay(rctx); err != nil || n != 40 {
		t.Fatalf("replayed %d records: %v", n, err)
	}
	msgs := check()
	if msgs < 3 {
		t.Fatalf("%d-byte segment in %d messages: not split", size, msgs)
	}
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := s.auditLog.replay(rctx); err != nil || n != 40 {
		t.Fatalf("replayed again %d records: %v", n, err)
	}
	if again := check(); again != msgs {
		t.Fatalf("%d messages after replaying the segment again, %d before", again, msgs)
	}
}

// TestAuditReplayAfterLiveCut: the live run's cut of a batch the stream
// refused is the one replay makes, whatever the limits are then. A live
// batch sealed at half a 16 KiB max_payload (one record over 8 KiB) is
// refused by the stream's 4 KiB max_msg_size and cut into three pieces;
// the first two are stored, the third is refused (the stream full) and
// the process dies (kill -9: nothing more runs). A new process (the
// stream's limit not yet learned, batches of 8 KiB) replays the segment:
// every record is stored exactly once, none twice under new ids, none
// lost to a piece id the stream already holds with other records.
func TestAuditReplayAfterLiveCut(t *testing.T) {
	const maxPayload, maxMsg = 16 << 10, 4 << 10
	ns := startSmallNATS(t, maxPayload)
	s := startServer(t, ServerConfig{NATSURL: ns.ClientURL(), HelloInterval: time.Minute})
	nc := connect(t, ns.ClientURL())
	limitAuditMsgSize(t, nc, maxMsg)
	spool := t.TempDir()
	live := newAuditLog(s, spool, 0)
	limit := live.batchBytes()
	if limit != maxPayload/2 {
		t.Fatalf("batch size %d, want %d", limit, maxPayload/2)
	}
	// The batch as add seals it: records until it reaches the limit.
	var data []byte
	n := 0
	for len(data) < limit {
		data = appendAuditRecord(data, &auditRecord{At: time.Now(), RequestID: "lc-" + strconv.Itoa(n), Requester: "req",
			Home: "c0", Service: "svc-" + strings.Repeat("x", 200), Reason: ReasonManual, NoPlacement: "no-candidates", DecidedBy: "old"})
		n++
	}
	name := "LIVEWRITER-0000000000000001"
	seg := filepath.Join(spool, name+spoolSuffix)
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if len(splitLines(data, limit)) < 2 {
		t.Fatalf("batch of %d bytes fits the replay's batch size: the test proves nothing", len(data))
	}

	// The stream takes two more messages, no more.
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx(t), AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx(t))
	orig := info.Config
	full := orig
	full.MaxMsgs, full.Discard = int64(info.State.Msgs)+2, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx(t), full); err != nil {
		t.Fatal(err)
	}

	// Live: the batch is published whole and refused on its ack as too
	// large for the stream; run cuts it so.
	b := &auditBatch{id: name, writer: "LIVEWRITER", data: data, records: n, spool: seg}
	sent := live.send(b)
	if len(sent) != 1 || sent[0].ack == nil {
		t.Fatalf("batch not published whole: %d batches", len(sent))
	}
	select {
	case <-sent[0].ack.Ok():
		t.Fatal("batch over the stream's max_msg_size acknowledged")
	case err := <-sent[0].ack.Err():
		if !tooLargeForStream(err) {
			t.Fatalf("batch refused with %v, want too large for the stream", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ack")
	}
	pl := live.streamPieceLimit(ctx(t))
	if pl != maxMsg-auditHeaderRoom {
		t.Fatalf("piece limit %d", pl)
	}
	pieces := live.splitBatch(b, pl, "the audit stream's max_msg_size")
	if len(pieces) != 3 {
		t.Fatalf("%d pieces, want 3", len(pieces))
	}
	for i, p := range pieces {
		select {
		case <-p.ack.Ok():
			if i == 2 {
				t.Fatal("third piece stored: the stream was to be full")
			}
		case err := <-p.ack.Err():
			if i < 2 {
				t.Fatalf("piece %s refused: %v", p.id, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("piece %s: no ack", p.id)
		}
	}
	// kill -9: the segment stays in the spool. The stream takes appends
	// again (its max_msg_size still 4 KiB).
	if _, err := js.UpdateStream(ctx(t), orig); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(seg); err != nil {
		t.Fatalf("segment gone before its last piece was acknowledged: %v", err)
	}

	// A new process on the same spool.
	fresh := newAuditLog(s, spool, 0)
	if fresh.batchBytes() != limit {
		t.Fatalf("new process seals at %d, want %d", fresh.batchBytes(), limit)
	}
	rctx, cancel := context.WithTimeout(ctx(t), 20*time.Second)
	defer cancel()
	if got, err := fresh.replay(rctx); err != nil || got != n {
		t.Fatalf("replayed %d records of %d: %v", got, n, err)
	}
	got, _ := auditRecords(t, nc)
	for i := range n {
		if id := "lc-" + strconv.Itoa(i); got[id] != 1 {
			t.Errorf("record %s stored %d times", id, got[id])
		}
	}
	left, _ := filepath.Glob(filepath.Join(spool, "*"))
	if len(left) != 0 {
		t.Fatalf("spool not empty after the replay: %v", left)
	}
}

// TestAuditFollowFilters: a replica's follower filters, on a real stream,
// deliver every batch under the plain subject and under any other
// writer's subject, and none under the replica's own.
func TestAuditFollowFilters(t *testing.T) {
	ns := startNATS(t)
	startServer(t, ServerConfig{Name: "mo1", NATSURL: ns.ClientURL()}) // creates the stream
	nc := connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	self := nuid.Next()
	want := map[string]bool{}
	publish := func(subj, id string) {
		t.Helper()
		msg := nats.NewMsg(subj)
		msg.Data = []byte(id)
		if _, err := js.PublishMsg(ctx(t), msg, jetstream.WithExpectStream(AuditStream)); err != nil {
			t.Fatalf("publish on %s: %v", subj, err)
		}
	}
	publish(AuditSubject, "plain")
	want["plain"] = true
	for i := 0; i < 300; i++ {
		w := nuid.Next()
		id := "other-" + strconv.Itoa(i)
		publish(auditSubjectOf(w), id)
		want[id] = true
		if i%10 == 0 {
			publish(auditSubjectOf(self), "self-"+strconv.Itoa(i))
		}
	}
	// Writers whose hashes share a long prefix with self's (they differ
	// only in the last bits) must be delivered too.
	h := fnv.New64a()
	h.Write([]byte(self))
	v := h.Sum64()
	for _, bit := range []int{0, 1, 31, 62, 63} {
		id := "near-" + strconv.Itoa(bit)
		publish(auditSubjectBits(v^(1<<(63-bit)), auditWriterBits), id)
		want[id] = true
	}
	filters := auditFollowFilters(self)
	if len(filters) != 1+auditWriterBits {
		t.Fatalf("%d filters", len(filters))
	}
	cons, err := js.OrderedConsumer(ctx(t), AuditStream, jetstream.OrderedConsumerConfig{FilterSubjects: filters})
	if err != nil {
		t.Fatalf("consumer with the follower's filters: %v", err)
	}
	got := map[string]bool{}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		id := string(m.Data())
		if strings.HasPrefix(id, "self-") {
			t.Errorf("the writer's own batch %s (%s) was delivered", id, m.Subject())
		}
		if got[id] {
			t.Errorf("%s delivered twice", id)
		}
		got[id] = true
	}
	for id := range want {
		if !got[id] {
			t.Errorf("batch %s not delivered", id)
		}
	}
}
