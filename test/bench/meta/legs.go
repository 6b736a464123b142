package main

// Where a placement's time goes, per request: the requester takes the wall
// clock before it sends the request (sent) and after it has decoded the
// reply (recv); the MO writes the wall clock of its decision into the
// request's audit record ("at", taken after the request is decoded and
// the destination chosen, before the reply is sent). The benchmark reads
// the row's records back from the audit stream, so the MO is measured as
// it runs, with nothing added to it. The two processes share the
// machine's clock. Per row:
//
//   - to decision: sent -> at: the requester's send, NATS to the MO, the
//     MO's wake-up, decode and decision;
//   - from decision: at -> recv: the audit record, the reply, NATS back,
//     the requester's wake-up and decode.
//
// And what used the two cores meanwhile, from /proc: the MO's process
// (MO and its NATS server), the process playing the clusters' hellos,
// the requester's, and everything else on the machine.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/roamnet/roam/meta"
)

// legs are a row's requests split at the MO's decision.
type legs struct {
	toP50, toP99     time.Duration // sent -> decision
	fromP50, fromP99 time.Duration // decision -> reply decoded
	matched          int           // requests found in the audit stream
	// Of the slowest 1% of round trips, how many spent longer before the
	// decision than after it.
	slowTo, slow int
}

// decisionTimes reads the decision time of every audit record written
// since since, by request id, until want ids are found or limit passes.
func decisionTimes(url string, since time.Time, want map[string]bool, limit time.Duration) (map[string]time.Time, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, meta.AuditStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since})
	if err != nil {
		return nil, fmt.Errorf("audit consumer: %w", err)
	}
	out := map[string]time.Time{}
	for len(out) < len(want) {
		msgs, err := cons.FetchNoWait(256)
		if err != nil {
			return out, err
		}
		n := 0
		for m := range msgs.Messages() {
			n++
			sc := bufio.NewScanner(bytes.NewReader(m.Data()))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var rec struct {
					At        time.Time `json:"at"`
					RequestID string    `json:"request_id"`
				}
				if json.Unmarshal(sc.Bytes(), &rec) == nil && want[rec.RequestID] {
					out[rec.RequestID] = rec.At
				}
			}
		}
		if n == 0 {
			if ctx.Err() != nil {
				return out, nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return out, nil
}

// splitLegs splits the round trips at the MO's decisions.
func splitLegs(trips []trip, at map[string]time.Time) legs {
	var to, from, total []time.Duration
	var pairs [][2]time.Duration
	for _, tr := range trips {
		d, ok := at[tr.ID]
		if !ok {
			continue
		}
		a, b := d.Sub(time.Unix(0, tr.Sent)), time.Unix(0, tr.Recv).Sub(d)
		to, from, total = append(to, a), append(from, b), append(total, a+b)
		pairs = append(pairs, [2]time.Duration{a, b})
	}
	var l legs
	if len(to) == 0 {
		return l
	}
	l.matched = len(to)
	l.toP50, l.toP99, l.fromP50, l.fromP99 = pct(to, 50), pct(to, 99), pct(from, 50), pct(from, 99)
	p99 := pct(total, 99)
	for _, p := range pairs {
		if p[0]+p[1] >= p99 {
			l.slow++
			if p[0] > p[1] {
				l.slowTo++
			}
		}
	}
	return l
}

// cpuTicks reads a process's user+system CPU time (clock ticks).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// machineTicks is the machine's busy CPU time (clock ticks): all but
// idle and iowait.
func machineTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy int64
	for i, x := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(x, 10, 64)
		if i != 3 && i != 4 {
			busy += v
		}
	}
	return busy
}

// cpuUse is the CPU seconds of the row's processes and of the rest of the
// machine.
type cpuUse struct {
	mo, hellos, requester, other float64
}

type cpuReading [4]int64

func readCPU(hellos, requester int) cpuReading {
	return cpuReading{cpuTicks(os.Getpid()), cpuTicks(hellos), cpuTicks(requester), machineTicks()}
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

func cpuDelta(a, b cpuReading) cpuUse {
	s := func(i int) float64 { return float64(b[i]-a[i]) / clockTicks }
	return cpuUse{mo: s(0), hellos: s(1), requester: s(2), other: max(s(3)-s(0)-s(1)-s(2), 0)}
}
