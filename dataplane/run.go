package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/roamnet/roam/dataplane/lb"
)

// xdpMD is struct xdp_md, the XDP context given to BPF_PROG_TEST_RUN.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// RunXDP runs the XDP program once on pkt through BPF_PROG_TEST_RUN as if it
// arrived on ifindex (in the calling thread's network namespace; 0 means
// that namespace's loopback). It returns the verdict and the output frame.
func (d *Dataplane) RunXDP(pkt []byte, ifindex int) (uint32, []byte, error) {
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	if ifindex != 0 {
		opts.Context = xdpMD{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)}
	}
	ret, err := d.objs.RoamXdp.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run xdp program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// RunTC runs the tc program once on pkt through BPF_PROG_TEST_RUN.
func (d *Dataplane) RunTC(pkt []byte) (uint32, []byte, error) {
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := d.objs.RoamTc.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run tc program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// skbCtx is the head of struct __sk_buff up to ifindex, the context
// RunTCIngress gives BPF_PROG_TEST_RUN (the kernel zeroes the rest).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTci, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// RunTCIngress runs the tc program once on pkt as if it arrived on
// ifindex's ingress hook (RunTC: as if the host sent it).
func (d *Dataplane) RunTCIngress(pkt []byte, ifindex int) (uint32, []byte, error) {
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: skbCtx{IngressIfindex: uint32(ifindex), Ifindex: uint32(ifindex)}}
	ret, err := d.objs.RoamTc.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run tc program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// BenchResult is what BenchXDPDetail measured, per packet.
type BenchResult struct {
	PerPacket time.Duration // roam_xdp, kernel mean over repeat runs
	Baseline  time.Duration // an empty XDP program the same way (test-run overhead)
	Verdict   uint32        // roam_xdp's verdict: XDP_TX (3) or XDP_REDIRECT (4)
	Insns     int           // roam_xdp's instructions after the verifier (0 if the kernel does not say)
}

// BenchXDP returns the XDP program's cost per packet on an established
// redirected flow (see BenchXDPDetail).
func (d *Dataplane) BenchXDP(pkt []byte, repeat int) (time.Duration, error) {
	r, err := BenchXDPDetail(pkt, repeat)
	return r.PerPacket, err
}

// BenchXDPDetail measures the XDP program through BPF_PROG_TEST_RUN with
// the kernel's repeat, on a private, unpinned copy of the maps, in the
// calling thread's network namespace (ingress: its loopback).
//
// pkt is an Ethernet frame client -> server (IPv4 without options or IPv6,
// TCP or UDP). Plain repeat feeds the program the frame it rewrote, so the
// copy is set up to make the NAT an identity (and the runs go in calls of
// fewer than the frame's TTL, which each forward decrements: benchChunked): the frontend is the packet's
// destination, redirected to itself, and the SNAT address and one-port range
// are the packet's source. A first run creates the flow (for TCP, with the
// frame's SYN flag set: only a SYN opens a flow); every repeat then takes
// the full pinned-flow path (conntrack hit, TCP state, address and port
// rewrite with checksum updates, bpf_fib_lookup, MAC rewrite, counters) on
// warm caches. The calling namespace needs a route
// and a neighbour entry for the destination, or the verdict is not a
// transmit and an error is returned.
func BenchXDPDetail(pkt []byte, repeat int) (BenchResult, error) {
	spec, err := loadRoam()
	if err != nil {
		return BenchResult{}, err
	}
	return BenchXDPSpec(spec, pkt, repeat)
}

// BenchXDPSpec is BenchXDPDetail for another build of bpf/roam.c.
func BenchXDPSpec(spec *ebpf.CollectionSpec, pkt []byte, repeat int) (BenchResult, error) {
	b, err := NewXDPBench(spec, pkt)
	if err != nil {
		return BenchResult{}, err
	}
	defer b.Close()
	return b.Run(repeat)
}

// XDPBench is the XDP program of one build of bpf/roam.c loaded with
// private maps and set up for BenchXDPDetail's identity NAT, to be measured
// many times (the benchmark's ablations load several builds and measure
// them in turn).
type XDPBench struct {
	objs xdpObjects
	pkt  []byte
	hold [2]int // HoldOn's interfaces; 0: none
}

// HoldOn makes Run attach the measured programs (roam_xdp, the empty
// baseline) to these two idle interfaces of the calling thread's network
// namespace while it runs. A BPF_PROG_TEST_RUN with repeat of an XDP
// program the XDP dispatcher does not hold adds it to the dispatcher and
// takes it out again, each an expedited RCU synchronisation; Run makes a
// call per TTL's worth of repeats, so on a busy machine those dominate
// and a million repeats take minutes. Attached, the program stays in the
// dispatcher: two attachments per Run instead.
func (b *XDPBench) HoldOn(ifindex0, ifindex1 int) { b.hold = [2]int{ifindex0, ifindex1} }

// attachHeld attaches prog to the idle interface ifindex (driver mode); nil if there is none.
func attachHeld(prog *ebpf.Program, ifindex int) (link.Link, error) {
	if ifindex == 0 {
		return nil, nil
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		return nil, fmt.Errorf("bench xdp: hold %s on interface %d: %w", prog, ifindex, err)
	}
	return l, nil
}

// NewXDPBench loads spec's XDP program (a build of bpf/roam.c; its maps are unpinned)
// and opens pkt's flow as BenchXDPDetail does.
func NewXDPBench(spec *ebpf.CollectionSpec, pkt []byte) (*XDPBench, error) {
	fam, src, dst, proto, sport, dport, err := frameTuple(pkt)
	if err != nil {
		return nil, fmt.Errorf("bench xdp: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	// A build from before the IPv4 flow maps (bench-dataplane's -ablate-src
	// A/B of commits) has none: stand-ins its program does not use.
	for _, name := range []string{"roam_ct4", "roam_nat4"} {
		if spec.Maps[name] == nil {
			spec.Maps[name] = &ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 16, ValueSize: 8, MaxEntries: 1}
		}
	}
	b := &XDPBench{pkt: pkt}
	if err := spec.LoadAndAssign(&b.objs, nil); err != nil {
		return nil, loadError("xdp", "", err)
	}
	cfg := roamConfig{PortMin: sport, PortMax: sport, TcpSynNs: uint64(time.Hour), TcpSynEvictNs: uint64(time.Hour), TcpEstablishedNs: uint64(time.Hour),
		TcpCloseNs: uint64(time.Hour), TcpTimeWaitNs: uint64(time.Hour), UdpNs: uint64(time.Hour), UdpDrainNs: uint64(time.Hour)}
	if fam == familyV4 {
		cfg.Snat4, cfg.HasSnat4, cfg.Snat4Count = src, 1, 1
	} else {
		cfg.Snat6, cfg.HasSnat6, cfg.Snat6Count = src, 1, 1
	}
	if err := b.objs.RoamConfig.Put(uint32(0), &cfg); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench xdp: write config: %w", err)
	}
	key := FrontendKey{Addr: dst, Port: htons(dport), Proto: proto, Family: fam}
	svc := ServiceValue{Id: 1}
	// Counted at index 1, as Stage would give the target one (targetcount.go).
	svc.Slot[0] = TargetValue{Addr: dst, Port: htons(dport), Kind: uint8(lb.TargetRedirect), Family: fam, Counter: 1}
	if err := b.objs.RoamServiceSlots.Put(svc.Id, &svc); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench xdp: write service: %w", err)
	}
	if err := b.objs.RoamServices.Put(&key, svc.Id); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench xdp: write service: %w", err)
	}
	open := pkt
	if proto == uint8(lb.TCP) {
		open = append([]byte(nil), pkt...)
		open[tcpFlagsOffset(pkt)] = 0x02 // SYN; the checksum does not matter here
	}
	if _, _, err = b.objs.RoamXdp.Benchmark(open, 1, nil); err != nil {
		b.Close()
		return nil, fmt.Errorf("bench xdp: %w", err)
	}
	return b, nil
}

// Close releases the program and its maps.
func (b *XDPBench) Close() error { return b.objs.Close() }

// xdpObjects is what XDPBench loads of bpf/roam.c: the XDP program and the maps.
type xdpObjects struct {
	RoamXdp *ebpf.Program `ebpf:"roam_xdp"`
	roamMaps
}

func (o *xdpObjects) Close() error { return errors.Join(o.RoamXdp.Close(), o.roamMaps.Close()) }

// Run measures repeat runs of the established flow's packet, and an empty
// program the same way.
func (b *XDPBench) Run(repeat int) (BenchResult, error) {
	if repeat < 1 {
		return BenchResult{}, fmt.Errorf("bench xdp: repeat %d < 1", repeat)
	}
	var r BenchResult
	held, err := attachHeld(b.objs.RoamXdp, b.hold[0])
	if err != nil {
		return BenchResult{}, err
	}
	if held != nil {
		defer held.Close()
	}
	if r.Verdict, r.PerPacket, err = benchChunked(b.objs.RoamXdp, b.pkt, repeat); err != nil {
		return BenchResult{}, fmt.Errorf("bench xdp: %w", err)
	}
	if info, err := b.objs.RoamXdp.Info(); err == nil {
		if insns, err := info.Instructions(); err == nil {
			r.Insns = len(insns)
		}
	}
	if r.Verdict != 3 && r.Verdict != 4 {
		return r, fmt.Errorf("bench xdp: verdict %d, not XDP_TX or XDP_REDIRECT (does this namespace have a route and a neighbour for the destination, and forwarding on?)", r.Verdict)
	}
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 2, asm.DWord), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return BenchResult{}, fmt.Errorf("bench xdp: load baseline program: %w", err)
	}
	defer empty.Close()
	heldEmpty, err := attachHeld(empty, b.hold[1])
	if err != nil {
		return BenchResult{}, err
	}
	if heldEmpty != nil {
		defer heldEmpty.Close()
	}
	if _, r.Baseline, err = benchChunked(empty, b.pkt, repeat); err != nil {
		return BenchResult{}, fmt.Errorf("bench xdp baseline: %w", err)
	}
	return r, nil
}

// benchChunked runs prog on pkt repeat times and returns the last verdict
// and the kernel's mean time per run. The kernel's repeat feeds a program
// the frame it rewrote, and the XDP program decrements the TTL of every
// packet it forwards (dropping it at 1): so the runs go in calls of at
// most the frame's TTL - 1 repeats, each starting from pkt afresh (the
// kernel times only the runs, not the calls).
func benchChunked(prog *ebpf.Program, pkt []byte, repeat int) (uint32, time.Duration, error) {
	chunk := 63
	switch binary.BigEndian.Uint16(pkt[12:]) {
	case 0x0800:
		chunk = int(pkt[14+8]) - 1
	case 0x86dd:
		chunk = int(pkt[14+7]) - 1
	}
	if chunk < 1 {
		return 0, 0, fmt.Errorf("bench: frame with a TTL of %d cannot be forwarded", chunk+1)
	}
	var (
		verdict uint32
		total   time.Duration
	)
	for done := 0; done < repeat; {
		n := min(chunk, repeat-done)
		v, d, err := prog.Benchmark(pkt, n, nil)
		if err != nil {
			return 0, 0, err
		}
		verdict, total, done = v, total+d*time.Duration(n), done+n
	}
	return verdict, total / time.Duration(repeat), nil
}

// tcpFlagsOffset is the offset of the TCP flags byte in a frame frameTuple accepted.
func tcpFlagsOffset(pkt []byte) int {
	if binary.BigEndian.Uint16(pkt[12:]) == 0x0800 {
		return 34 + 13
	}
	return 54 + 13
}

// frameTuple reads the 5-tuple of an Ethernet frame (addresses in map form,
// ports in host order).
func frameTuple(pkt []byte) (fam uint8, src, dst [16]uint8, proto uint8, sport, dport uint16, err error) {
	if len(pkt) < 14 {
		return 0, src, dst, 0, 0, 0, fmt.Errorf("frame of %d bytes is too short", len(pkt))
	}
	var l4 int
	switch binary.BigEndian.Uint16(pkt[12:]) {
	case 0x0800:
		if len(pkt) < 34 || pkt[14] != 0x45 {
			return 0, src, dst, 0, 0, 0, fmt.Errorf("want IPv4 without options")
		}
		fam, proto, l4 = familyV4, pkt[23], 34
		src = netip.AddrFrom4([4]byte(pkt[26:30])).As16()
		dst = netip.AddrFrom4([4]byte(pkt[30:34])).As16()
	case 0x86dd:
		if len(pkt) < 54 {
			return 0, src, dst, 0, 0, 0, fmt.Errorf("IPv6 frame too short")
		}
		fam, proto, l4 = familyV6, pkt[20], 54
		src, dst = [16]uint8(pkt[22:38]), [16]uint8(pkt[38:54])
	default:
		return 0, src, dst, 0, 0, 0, fmt.Errorf("not an IP frame")
	}
	if (proto != uint8(lb.TCP) && proto != uint8(lb.UDP)) || len(pkt) < l4+8 {
		return 0, src, dst, 0, 0, 0, fmt.Errorf("want TCP or UDP")
	}
	return fam, src, dst, proto, binary.BigEndian.Uint16(pkt[l4:]), binary.BigEndian.Uint16(pkt[l4+2:]), nil
}

// RoamSpec is the committed build of bpf/roam.c, for NewXDPBench.
func RoamSpec() (*ebpf.CollectionSpec, error) { return loadRoam() }
