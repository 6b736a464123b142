package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/test/netns"
)

// The generator, sink and reference programs are compiled from bpf/pktgen.c
// by bpf2go (make generate); the output is committed so `go run` needs no clang.
//go:generate go tool bpf2go -cc $BPF_CLANG -cflags "$BPF_CFLAGS" -strip $BPF_STRIP -target bpfel -type gen_config -type sink_config -type minfwd_config -type key40 -type key16 pktgen bpf/pktgen.c

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTx   = 3

	payloadLen = 64 // UDP payload bytes of every generated packet

	// batchSize is the live-frame batch: the frames of one batch are
	// flushed to the veth (whose ring holds 256) and forwarded in the
	// softirq that follows it, so the path is never flooded. The kernel
	// refuses more than 256.
	batchSize = 64
)

// flows says which flows a run sends.
type flows struct {
	fam       fam
	first     uint64 // index of the first flow
	count     uint64 // flows cycled through; 0: every packet a new flow
	frontends uint32 // flow i goes to frontend fport0 + i % frontends
}

// gen is the packet generator of one path: bench_gen run by
// BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES from the client
// namespace, so XDP_TX sends its frames out of c0 towards the forwarder.
type gen struct {
	objs    pktgenObjects
	ns      string
	ifindex int
	frame   [2][]byte
	hold    link.Link
}

func newGen(ns string) (*gen, error) {
	g := &gen{ns: ns}
	if err := loadPktgenObjects(&g.objs, nil); err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	err := netns.Do(ns, func() error {
		ifc, err := net.InterfaceByName("c0")
		if err != nil {
			return err
		}
		g.ifindex = ifc.Index
		return nil
	})
	if err != nil {
		g.objs.Close()
		return nil, fmt.Errorf("find c0 in %s: %w", ns, err)
	}
	// Every BPF_PROG_TEST_RUN of an XDP program that the XDP dispatcher
	// does not hold patches kernel text twice (in and out, IPIs to every
	// CPU). Attached to an idle veth, the program stays in the dispatcher.
	if g.hold, err = attachProg(ns, "g0", g.objs.BenchGen); err != nil {
		g.objs.Close()
		return nil, err
	}
	for _, f := range []fam{v4, v6} {
		if g.frame[f], err = flowZero(f); err != nil {
			g.objs.Close()
			return nil, err
		}
	}
	return g, nil
}

func (g *gen) Close() error { return errors.Join(g.hold.Close(), g.objs.Close()) }

// flowZero is flow 0's frame: client prefix's first address, port 1024, to
// the first frontend, UDP with payloadLen bytes.
func flowZero(f fam) ([]byte, error) {
	src := flowSrc[f].Addr().Next()
	udp := &layers.UDP{SrcPort: 1024, DstPort: fport0}
	var l3 gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: macC0, DstMAC: macH0}
	if f == v4 {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: frontAddr[f].AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l3 = ip
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: frontAddr[f].AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(ip)
		l3 = ip
	}
	payload := make([]byte, payloadLen)
	for i := range payload {
		payload[i] = byte(i)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, l3, udp, gopacket.Payload(payload))
	if err != nil {
		return nil, fmt.Errorf("build %s frame: %w", f, err)
	}
	return buf.Bytes(), nil
}

// configure sets what the next runs send; verdict xdpTx sends, xdpDrop
// only generates.
func (g *gen) configure(fl flows, verdict uint32) error {
	c := pktgenGenConfig{First: fl.first, Flows: fl.count, Frontends: max(fl.frontends, 1), Verdict: verdict, Family: 4}
	if fl.fam == v6 {
		c.Family = 6
	}
	copy(c.Hdr[:], g.frame[fl.fam])
	if err := g.objs.GenCfg.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("configure generator: %w", err)
	}
	if err := g.objs.GenSeq.Put(uint32(0), uint64(0)); err != nil {
		return fmt.Errorf("reset generator: %w", err)
	}
	return nil
}

// sent is the number of frames generated since configure.
func (g *gen) sent() (uint64, error) {
	var n uint64
	if err := g.objs.GenSeq.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read generator sequence: %w", err)
	}
	return n, nil
}

// xdpMD is struct xdp_md: live frames need data_end, and the ingress
// interface is what XDP_TX sends out of.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// send runs the generator n times (one syscall, batches of batchSize) on
// the calling thread, which must be in the client namespace.
func (g *gen) send(fl flows, n uint32) error {
	frame := g.frame[fl.fam]
	_, err := g.objs.BenchGen.Run(&ebpf.RunOptions{
		Data:      frame,
		Context:   xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(g.ifindex)},
		Repeat:    n,
		Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		BatchSize: batchSize,
	})
	if err != nil {
		return fmt.Errorf("run generator: %w", err)
	}
	return nil
}

// sendChunk is the most frames one BPF_PROG_TEST_RUN call sends: between
// calls the benchmark notices Ctrl-C (the kernel restarts an interrupted
// call, so a long one would hold it up).
const sendChunk = 1 << 18

// sendAll sends n frames in calls of at most sendChunk.
func (g *gen) sendAll(ctx context.Context, fl flows, n uint32) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, sendChunk)
		if err := g.send(fl, c); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// onCPU runs f on a thread of the client namespace pinned to cpu, and
// restores the thread's affinity after.
func onCPU(ns string, cpu int, f func() error) error {
	return netns.Do(ns, func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return fmt.Errorf("get affinity: %w", err)
		}
		one.Set(cpu)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return fmt.Errorf("pin to CPU %d: %w", cpu, err)
		}
		ferr := f()
		if err := unix.SchedSetaffinity(0, &old); err != nil {
			return errors.Join(ferr, fmt.Errorf("restore affinity: %w", err))
		}
		return ferr
	})
}

// sink counts what reaches a namespace's interface and drops it.
type sink struct {
	objs pktgenObjects
	lk   link.Link
}

// sinkMatch is what a sink counts as delivered.
type sinkMatch struct {
	fam        fam
	dst, src   []byte // zero: any
	pmin, pmax uint16
}

func newSink(ns, dev string) (*sink, error) {
	s := &sink{}
	if err := loadPktgenObjects(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load sink: %w", err)
	}
	err := netns.Do(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		s.lk, err = link.AttachXDP(link.XDPOptions{Program: s.objs.BenchSink, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach sink to %s in %s: %w", dev, ns, err)
	}
	return s, nil
}

func (s *sink) Close() error { return errors.Join(s.lk.Close(), s.objs.Close()) }

func (s *sink) expect(m sinkMatch) error {
	c := pktgenSinkConfig{PortMin: m.pmin, PortMax: m.pmax, Family: 4}
	if m.fam == v6 {
		c.Family = 6
	}
	copy(c.Daddr[:], m.dst)
	copy(c.Saddr[:], m.src)
	if err := s.objs.SinkCfg.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("configure sink: %w", err)
	}
	return nil
}

// counts returns the frames that matched and the others.
func (s *sink) counts() (good, other uint64, err error) {
	for slot, dst := range []*uint64{&good, &other} {
		var per []uint64
		if err := s.objs.SinkCount.Lookup(uint32(slot), &per); err != nil {
			return 0, 0, fmt.Errorf("read sink: %w", err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return good, other, nil
}

// attachProg attaches one of the reference programs in native mode.
func attachProg(ns, dev string, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := netns.Do(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s in %s: %w", prog, dev, ns, err)
	}
	return l, nil
}
