package dataplane

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/dataplane/lb"
)

type collector struct {
	d                          *Dataplane
	packets, bytes, drops, cts *prometheus.Desc
	maxEntries, pressure       *prometheus.Desc
	gcRemoved, insertFailures  *prometheus.Desc
	targetPackets, targetBytes *prometheus.Desc
	pinsReplaced               *prometheus.Desc
	legacyFlows, legacyErrors  *prometheus.Desc
	srv6                       srv6Descs
}

// Collector returns a Prometheus collector that reads the per-CPU counter
// maps at scrape time and sums the CPUs. On a read error it emits nothing
// (never a partial figure) and logs why.
func (d *Dataplane) Collector() prometheus.Collector {
	return &collector{
		d: d,
		packets: prometheus.NewDesc("roam_dataplane_packets_total",
			"Packets of a frontend by what the data plane did with them.", []string{"frontend", "action"}, nil),
		bytes: prometheus.NewDesc("roam_dataplane_bytes_total",
			"Bytes of a frontend by what the data plane did with them.", []string{"frontend", "action"}, nil),
		drops: prometheus.NewDesc("roam_dataplane_drops_total",
			"Packets dropped, or passed untouched because they could not be handled, by reason.", []string{"reason"}, nil),
		cts:            mapDesc("roam_dataplane_conntrack_entries", "Entries of a conntrack map (conntrack: one per flow; nat: one per redirected flow), both families, timed-out ones not yet reclaimed included."),
		maxEntries:     mapDesc("roam_dataplane_map_max_entries", "Capacity of a conntrack map, per family (its IPv4 and IPv6 maps hold Config.MaxFlows each)."),
		pressure:       mapDesc("roam_dataplane_map_pressure", "Entries of a conntrack map over its capacity (0-1), of the fuller of its IPv4 and IPv6 maps: at 1 new flows of that family are refused (flows held are never evicted); GC runs without pause above 0.75."),
		gcRemoved:      mapDesc("roam_dataplane_gc_removed_total", "Expired entries of a conntrack map removed by the agent's garbage collection."),
		insertFailures: mapDesc("roam_dataplane_map_insert_failures_total", "New flows the programs could not insert (conntrack: ct_full, the map full; nat: port_exhausted, no free SNAT port, and nat_full, the map full): dropped."),
		targetPackets: prometheus.NewDesc("roam_dataplane_target_packets_total",
			"Packets to a redirect target (direction to) and from it (its replies, direction from).", []string{"target", "proto", "direction"}, nil),
		targetBytes: prometheus.NewDesc("roam_dataplane_target_bytes_total",
			"Bytes to a redirect target (direction to) and from it (its replies, direction from).", []string{"target", "proto", "direction"}, nil),
		pinsReplaced: prometheus.NewDesc("roam_dataplane_pins_replaced_total",
			"Metrics-only maps whose pin, left by another version with another layout, this agent's Open replaced (their counts restarted from zero).", []string{"map"}, nil),
		legacyFlows: prometheus.NewDesc("roam_dataplane_legacy_flows_total",
			"IPv4 flow entries an older build left in roam_conntrack and roam_nat that GC moved to roam_ct4 and roam_nat4 (result moved), or removed without a copy because those maps were full (result failed: the flow is lost); result stray: IPv4 entries found there after the move was over (an older build's program still attached wrote them; no program of this build reads them), removed by GC.", []string{"result"}, nil),
		legacyErrors: prometheus.NewDesc("roam_dataplane_legacy_merge_errors_total",
			"GC passes whose move of an older build's IPv4 flow entries failed (logged; the sweep went on, the next pass tries again).", nil, nil),
		srv6: newSRv6Descs(),
	}
}

// mapDesc describes a metric of each conntrack map (label map: conntrack, nat).
func mapDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"map"}, nil)
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.drops
	ch <- c.cts
	ch <- c.maxEntries
	ch <- c.pressure
	ch <- c.gcRemoved
	ch <- c.insertFailures
	ch <- c.targetPackets
	ch <- c.targetBytes
	ch <- c.pinsReplaced
	ch <- c.legacyFlows
	ch <- c.legacyErrors
	c.srv6.describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ms, err := c.read()
	if err != nil {
		slog.Warn("read data-plane counters", "err", err)
		return
	}
	for _, m := range ms {
		ch <- m
	}
}

func (c *collector) read() ([]prometheus.Metric, error) {
	services, err := c.d.List()
	if err != nil {
		return nil, err
	}
	var out []prometheus.Metric
	for _, s := range services {
		for a := Action(0); a < numActions; a++ {
			sum, err := c.d.counter(s.ID, a)
			if err != nil {
				return nil, err
			}
			f, act := s.Frontend.String(), a.String()
			out = append(out,
				prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(sum.Packets), f, act),
				prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(sum.Bytes), f, act))
		}
	}
	targets, err := c.d.TargetCounters()
	if err != nil {
		return nil, err
	}
	for _, tc := range targets {
		t, p := tc.Target.String(), tc.Proto.String()
		out = append(out,
			prometheus.MustNewConstMetric(c.targetPackets, prometheus.CounterValue, float64(tc.ToPackets), t, p, "to"),
			prometheus.MustNewConstMetric(c.targetBytes, prometheus.CounterValue, float64(tc.ToBytes), t, p, "to"),
			prometheus.MustNewConstMetric(c.targetPackets, prometheus.CounterValue, float64(tc.FromPackets), t, p, "from"),
			prometheus.MustNewConstMetric(c.targetBytes, prometheus.CounterValue, float64(tc.FromBytes), t, p, "from"))
	}
	drops, err := c.d.Drops()
	if err != nil {
		return nil, err
	}
	for _, name := range DropReasons {
		out = append(out, prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(drops[name]), name))
	}
	for _, name := range replaceablePins {
		n := 0
		for _, r := range c.d.replacedPins {
			if r == name {
				n++
			}
		}
		out = append(out, prometheus.MustNewConstMetric(c.pinsReplaced, prometheus.CounterValue, float64(n), name))
	}
	out = append(out,
		prometheus.MustNewConstMetric(c.legacyFlows, prometheus.CounterValue, float64(c.d.legacyMoved.Load()), "moved"),
		prometheus.MustNewConstMetric(c.legacyFlows, prometheus.CounterValue, float64(c.d.legacyFailed.Load()), "failed"),
		prometheus.MustNewConstMetric(c.legacyFlows, prometheus.CounterValue, float64(c.d.legacyStray.Load()), "stray"),
		prometheus.MustNewConstMetric(c.legacyErrors, prometheus.CounterValue, float64(c.d.legacyErrors.Load())))
	ct, err := familyEntries[CTValue](c.d.ctTable())
	if err != nil {
		return nil, err
	}
	nat, err := familyEntries[NATValue](c.d.natTable())
	if err != nil {
		return nil, err
	}
	for _, m := range []struct {
		name     string
		entries  [2]int
		table    flowTable
		removed  uint64
		failures uint64
	}{
		{"conntrack", ct, c.d.ctTable(), c.d.gc.ct[fam4].removed.Load() + c.d.gc.ct[fam6].removed.Load(), drops["ct_full"]},
		{"nat", nat, c.d.natTable(), c.d.gc.nat[fam4].removed.Load() + c.d.gc.nat[fam6].removed.Load(), drops["port_exhausted"] + drops["nat_full"]},
	} {
		// Entries: both families'; capacity: each family's (MaxFlows);
		// pressure: the fuller family's (where new flows are refused first).
		var capacity uint32
		pressure := 0.0
		for f, mp := range m.table {
			capacity = max(capacity, mp.MaxEntries())
			pressure = max(pressure, float64(m.entries[f])/float64(max(mp.MaxEntries(), 1)))
		}
		out = append(out,
			prometheus.MustNewConstMetric(c.cts, prometheus.GaugeValue, float64(m.entries[fam4]+m.entries[fam6]), m.name),
			prometheus.MustNewConstMetric(c.maxEntries, prometheus.GaugeValue, float64(capacity), m.name),
			prometheus.MustNewConstMetric(c.pressure, prometheus.GaugeValue, pressure, m.name),
			prometheus.MustNewConstMetric(c.gcRemoved, prometheus.CounterValue, float64(m.removed), m.name),
			prometheus.MustNewConstMetric(c.insertFailures, prometheus.CounterValue, float64(m.failures), m.name))
	}
	return c.srv6.read(c.d, services, out)
}

func (d *Dataplane) conntrackEntries() (int, error) { return countFlows[CTValue](d.ctTable()) }

func (d *Dataplane) natEntries() (int, error) { return countFlows[NATValue](d.natTable()) }

// familyEntries is how many flows t holds per family (walkFlows').
func familyEntries[V any](t flowTable) ([2]int, error) {
	var n [2]int
	err := walkFlows(t, func(k CTKey, _ V) { n[famIndex(k)]++ })
	return n, err
}

// Drops returns the drop and error counts by reason, summed over CPUs.
func (d *Dataplane) Drops() (map[string]uint64, error) {
	out := make(map[string]uint64, len(DropReasons))
	var per []uint64
	for r, name := range DropReasons {
		if err := d.maps.RoamDrops.Lookup(uint32(r), &per); err != nil {
			return nil, err
		}
		out[name] = sum(per, func(a, b uint64) uint64 { return a + b })
	}
	return out, nil
}

// Counters returns f's packet and byte counts for action, summed over CPUs.
func (d *Dataplane) Counters(f lb.Frontend, a Action) (Counter, error) {
	s, err := d.Get(f)
	if err != nil {
		return Counter{}, err
	}
	return d.counter(s.ID, a)
}

// counter reads one per-CPU counter slot and sums it.
func (d *Dataplane) counter(id uint32, a Action) (Counter, error) {
	var per []Counter
	if err := d.maps.RoamCounters.Lookup(id*numActions+uint32(a), &per); err != nil {
		return Counter{}, err
	}
	return sum(per, func(a, b Counter) Counter {
		return Counter{Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes}
	}), nil
}

// sum folds a per-CPU value's copies into one.
func sum[T any](per []T, add func(T, T) T) T {
	var total T
	for _, v := range per {
		total = add(total, v)
	}
	return total
}
