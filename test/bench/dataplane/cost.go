package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/test/netns"
)

// progCost is roam's XDP program alone, per packet (medians), beside a
// minimal rewrite-and-redirect measured in the same samples.
type progCost struct {
	perPacket, baseline, minimal float64
	vsMinimal                    float64 // median of the samples' roam/minimal
	min                          float64 // the least disturbed sample of roam's
}

// programCost runs an established flow's packet through roam's XDP program
// with BPF_PROG_TEST_RUN and the kernel's repeat (dataplane.NewXDPBench:
// BenchXDPDetail's private maps, NAT set up as an identity so every repeat
// takes the whole established-flow path), in the XDP path's home
// namespace, whose static neighbours make the fib lookup succeed. Each
// sample also runs bench_minfwd (bpf/pktgen.c), the least a NAT forwarder
// does, on the same frame: the two figures move together with the other
// vCPU's load, their ratio much less.
func (b *bench) programCost(ctx context.Context) ([2]progCost, error) {
	var out [2]progCost
	home := b.path("xdp").topo.home
	var h1 int
	err := netns.Do(home, func() error {
		l, err := netlink.LinkByName("h1")
		if err == nil {
			h1 = l.Attrs().Index
		}
		return err
	})
	if err != nil {
		return out, fmt.Errorf("find h1: %w", err)
	}
	var objs pktgenObjects
	if err := loadPktgenObjects(&objs, nil); err != nil {
		return out, fmt.Errorf("load bench_minfwd: %w", err)
	}
	defer objs.Close()
	spec, err := dataplane.RoamSpec()
	if err != nil {
		return out, err
	}
	for _, f := range []fam{v4, v6} {
		pkt, err := benchPacket(f, true)
		if err != nil {
			return out, err
		}
		mc := pktgenMinfwdConfig{Sport: htons(33333), Dport: htons(tport0), Ifindex: uint32(h1)}
		copy(mc.Macs[:6], macA0)
		copy(mc.Macs[6:], macH1)
		// Addresses as on the wire: the words' bytes in memory order.
		src, dst := clientAddr[f].AsSlice(), targetAddr[f].AsSlice()
		for i := 0; i < len(src); i += 4 {
			mc.Saddr[i/4], mc.Daddr[i/4] = binary.LittleEndian.Uint32(src[i:]), binary.LittleEndian.Uint32(dst[i:])
		}
		if err := objs.MinfwdCfg.Put(uint32(0), &mc); err != nil {
			return out, fmt.Errorf("configure bench_minfwd: %w", err)
		}
		var per, base, minimal, vs []float64
		k0, k1, err := b.path("xdp").topo.holdIfaces()
		if err != nil {
			return out, err
		}
		err = onCPU(home, b.o.cpu, func() error {
			xb, err := dataplane.NewXDPBench(spec.Copy(), pkt)
			if err != nil {
				return err
			}
			defer xb.Close()
			xb.HoldOn(k0, k1)
			for range 3 * b.o.reps {
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := xb.Run(b.o.repeat)
				if err != nil {
					return err
				}
				v, d, err := objs.BenchMinfwd.Benchmark(pkt, b.o.repeat, nil)
				if err != nil {
					return fmt.Errorf("bench_minfwd: %w", err)
				}
				if v != 4 {
					return fmt.Errorf("bench_minfwd: verdict %d, not XDP_REDIRECT", v)
				}
				per = append(per, float64(r.PerPacket.Nanoseconds()))
				base = append(base, float64(r.Baseline.Nanoseconds()))
				minimal = append(minimal, float64(d.Nanoseconds()))
				vs = append(vs, ratio(float64(r.PerPacket.Nanoseconds()), float64(d.Nanoseconds())))
			}
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("measure program cost: %w", err)
		}
		out[f] = progCost{perPacket: median(per), baseline: median(base), minimal: median(minimal), vsMinimal: median(vs), min: slices.Min(per)}
	}
	return out, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// benchPacket is an established TCP flow's data segment, or a UDP
// datagram, with 64 bytes of payload from the client to the target.
func benchPacket(f fam, isTCP bool) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: macC0, DstMAC: macH0, EthernetType: layers.EthernetTypeIPv4}
	var l4 interface {
		gopacket.SerializableLayer
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}
	proto := layers.IPProtocolUDP
	if isTCP {
		proto = layers.IPProtocolTCP
		l4 = &layers.TCP{SrcPort: 33333, DstPort: tport0, Seq: 1000, Ack: 2000, Window: 64240, ACK: true, PSH: true}
	} else {
		l4 = &layers.UDP{SrcPort: 33333, DstPort: tport0}
	}
	var l3 gopacket.SerializableLayer
	if f == v4 {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: clientAddr[f].AsSlice(), DstIP: targetAddr[f].AsSlice()}
		_ = l4.SetNetworkLayerForChecksum(ip)
		l3 = ip
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: clientAddr[f].AsSlice(), DstIP: targetAddr[f].AsSlice()}
		_ = l4.SetNetworkLayerForChecksum(ip)
		l3 = ip
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, l3, l4, gopacket.Payload(make([]byte, payloadLen)))
	if err != nil {
		return nil, fmt.Errorf("build packet: %w", err)
	}
	return buf.Bytes(), nil
}

// ctLimits sizes the kernel's conntrack to hold flows entries in each
// namespace (nf_conntrack_max is global, the count per namespace) with a
// hash table of two buckets per entry of the two netfilter paths together
// (kube-proxy sizes it at a quarter bucket per entry: this is kinder to
// the kernel paths). The sysctls are global and the machine shared: ensure
// sets them again if someone put them back meanwhile, restore puts back the
// values found first.
type ctLimits struct {
	want map[string]uint64
	old  map[string]string // found before the first change
}

func newCTLimits(flows uint64) *ctLimits {
	return &ctLimits{
		want: map[string]uint64{
			"net/netfilter/nf_conntrack_max":     flows + flows/10,
			"net/netfilter/nf_conntrack_buckets": nextPow2(4 * flows),
		},
		old: map[string]string{},
	}
}

func (c *ctLimits) ensure() error {
	for _, k := range []string{"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_buckets"} {
		file := filepath.Join("/proc/sys", k)
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		cur, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return fmt.Errorf("parse %s: %w", k, err)
		}
		if cur >= c.want[k] {
			continue
		}
		if _, ok := c.old[k]; ok {
			slog.Warn("a global conntrack sysctl was put back by someone else: setting it again", "sysctl", k, "found", cur, "want", c.want[k])
		} else {
			c.old[k] = strings.TrimSpace(string(b))
		}
		if err := os.WriteFile(file, []byte(strconv.FormatUint(c.want[k], 10)), 0o644); err != nil {
			return fmt.Errorf("set %s: %w", k, err)
		}
	}
	return nil
}

// current reads the sysctls as they are now (a value above what ensure
// wants is left as found), for the report.
func (c *ctLimits) current() string {
	var f []string
	for _, k := range []string{"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_buckets"} {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		v := "?"
		if err == nil {
			v = strings.TrimSpace(string(b))
		}
		f = append(f, filepath.Base(k)+" "+v)
	}
	return strings.Join(f, ", ")
}

func (c *ctLimits) restore() error {
	var errs []error
	for k, v := range c.old {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s to %s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

func nextPow2(v uint64) uint64 {
	p := uint64(1)
	for p < v {
		p <<= 1
	}
	return p
}

func numCPU() int { return runtime.NumCPU() }

// profileSample records one more sample of p under perf record (cpu-clock
// sampling of the measured CPU: this VM has no hardware counters) and
// prints the top symbols; the perf.data stays in the -profile directory.
func (b *bench) profileSample(ctx context.Context, sc scenario, p *path, n uint32) error {
	if err := os.MkdirAll(b.o.profile, 0o755); err != nil {
		return err
	}
	data := filepath.Join(b.o.profile, sc.key+"-"+p.name+".perf.data")
	if sc.flows == 0 && p.flush != nil {
		if err := p.flush(); err != nil { // not in the profile
			return err
		}
	}
	rec := exec.CommandContext(ctx, "perf", "record", "-q", "-C", strconv.Itoa(b.o.cpu), "-g", "-o", data)
	if err := rec.Start(); err != nil {
		return fmt.Errorf("start perf record: %w", err)
	}
	time.Sleep(300 * time.Millisecond)
	_, err := measure(ctx, p.gen, p.sink, b.flowsOf(sc, p), n, b.o.cpu, p.pace, b.clocks(p))
	_ = rec.Process.Signal(os.Interrupt)
	_ = rec.Wait() // perf may report the interrupt as its exit status
	if err != nil {
		return fmt.Errorf("profile %s %s: %w", sc.key, p.name, err)
	}
	// Only this benchmark's threads, its proxy and the CPU's ksoftirqd:
	// the CPU is shared with other work.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	comm := filepath.Base(self)
	comm = comm[:min(len(comm), 15)]
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", data, "--comms", comm+",ksoftirqd/"+strconv.Itoa(b.o.cpu),
		"--no-children", "--stdio", "--percentage", "relative", "-g", "none", "--percent-limit", "1", "--sort", "sym").Output()
	if err != nil {
		return fmt.Errorf("perf report: %w", err)
	}
	fmt.Printf("\nprofile %s / %s (%s):\n", sc.key, p.name, data)
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			fmt.Println("   ", l)
		}
	}
	return nil
}
