package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// path is one way of forwarding, on its own namespaces, with the
// generator at the client and the sink at the abroad end.
type path struct {
	name  string // short key: ref, xdp, iptables, nftables, userspace
	title string
	topo  *topo
	gen   *gen
	sink  *sink
	pace  pace
	// frontends the path serves (the userspace proxy listens on one port).
	frontends uint32
	// flush empties the path's connection tracking (nil: it has none).
	flush func() error
	// entries counts the path's connection-tracking entries.
	entries func() (int, error)
	// gcSweep times one full garbage-collection sweep as the agent runs it (roam only).
	gcSweep func() (time.Duration, error)
	proxy   *proxyProc // the userspace forwarder, whose CPU time counts
	// drops are the forwarder's drop counters by reason, nonzero ones (roam only).
	drops func() (map[string]uint64, error)
	// floorCfg points the floor path's rewrite at family f's SNAT and target addresses.
	floorCfg func(f fam) error
	close    []func() error
}

func (p *path) Close() error {
	var errs []error
	for i := len(p.close) - 1; i >= 0; i-- {
		errs = append(errs, p.close[i]())
	}
	if p.sink != nil {
		errs = append(errs, p.sink.Close())
	}
	if p.gen != nil {
		errs = append(errs, p.gen.Close())
	}
	if p.topo != nil {
		p.topo.close()
	}
	return errors.Join(errs...)
}

// newPath builds the namespaces, the generator and the sink; sinkAtHome
// puts the sink on the forwarder's ingress (the reference path).
func newPath(ctx context.Context, name, title, sfx string, frontends uint32, sinkAtHome bool) (*path, error) {
	p := &path{name: name, title: title, frontends: frontends}
	var err error
	if p.topo, err = newTopo(name, sfx); err != nil {
		return nil, err
	}
	if p.gen, err = newGen(p.topo.client); err != nil {
		p.Close()
		return nil, err
	}
	ns, dev := p.topo.abroad, "a0"
	if sinkAtHome {
		ns, dev = p.topo.home, "h0"
	}
	if p.sink, err = newSink(ns, dev); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// expect points the sink at what this path delivers for family f (and
// the floor path's rewrite at it).
func (p *path) expect(f fam, sinkAtHome bool) error {
	if p.floorCfg != nil {
		if err := p.floorCfg(f); err != nil {
			return fmt.Errorf("configure bench_floor: %w", err)
		}
	}
	if sinkAtHome {
		return p.sink.expect(sinkMatch{fam: f, dst: frontAddr[f].AsSlice(), pmin: fport0, pmax: fport0 + uint16(p.frontends) - 1})
	}
	return p.sink.expect(sinkMatch{fam: f, dst: targetAddr[f].AsSlice(), src: snatAddr[f].AsSlice(), pmin: tport0, pmax: tport0 + uint16(p.frontends) - 1})
}

// passOnHome keeps an XDP_PASS program on h0 and h1 for the kernel paths:
// a veth receives frames redirected into it only when its peer runs XDP,
// and the frames then enter the stack as on any NIC.
func (p *path) passOnHome() error {
	for _, dev := range []string{"h0", "h1"} {
		l, err := attachProg(p.topo.home, dev, p.sink.objs.BenchPass)
		if err != nil {
			return err
		}
		p.close = append(p.close, l.Close)
	}
	return nil
}

// setupRef is the reference: generator to the forwarder's ingress, where
// the sink drops (what every path pays before it forwards anything).
func setupRef(ctx context.Context, sfx string, frontends uint32) (*path, error) {
	return newPath(ctx, "ref", "reference (drop at forwarder ingress)", sfx, frontends, true)
}

// setupXDP is roam's data plane as the agent runs it: dataplane.Open on a
// pin path of its own with room for maxFlows flows, the XDP program on
// both of the home node's interfaces, one frontend per port staged and
// committed to its target, its conntrack and NAT maps preallocated as
// roam-agent's (--prealloc-flows). onDemand: an entry allocated per new
// flow (BPF_F_NO_PREALLOC, dataplane.Config's default; the path "xdpo").
func setupXDP(ctx context.Context, sfx string, frontends uint32, idle time.Duration, maxFlows int, onDemand bool) (*path, error) {
	name, title := "xdp", "(a) roam XDP redirector"
	if onDemand {
		name, title = "xdpo", "(a') roam, entries on demand"
	}
	p, err := newPath(ctx, name, title, sfx, frontends, false)
	if err != nil {
		return nil, err
	}
	pin := "/sys/fs/bpf/roam-bench-" + sfx + "-" + name
	dp, err := dataplane.Open(dataplane.Config{PinPath: pin, SNATv4: snatAddr[v4], SNATv6: snatAddr[v6], IdleTimeout: idle, MaxFlows: maxFlows, PreallocFlows: !onDemand})
	if err != nil {
		p.Close()
		return nil, err
	}
	p.close = append(p.close, func() error { return dataplane.Unpin(pin) }, dp.Close)
	err = netns.Do(p.topo.home, func() error {
		return errors.Join(dp.AttachXDP("h0", dataplane.XDPNative), dp.AttachXDP("h1", dataplane.XDPNative))
	})
	if err != nil {
		p.Close()
		return nil, err
	}
	for _, f := range []fam{v4, v6} {
		for i := range frontends {
			fe := lb.Frontend{Addr: frontAddr[f], Port: fport0 + uint16(i), Proto: lb.UDP}
			gen, err := dp.Stage(fe, lb.Redirect(netip.AddrPortFrom(targetAddr[f], tport0+uint16(i))))
			if err == nil {
				err = dp.Commit(fe, gen)
			}
			if err != nil {
				p.Close()
				return nil, err
			}
		}
	}
	// The flows' maps: conntrack and NAT (the SNAT ports, flushed with
	// them), each for IPv4 (roam_ct4, roam_nat4) and IPv6.
	var flowMaps []*ebpf.Map
	for _, name := range []string{"roam_ct4", "roam_conntrack", "roam_nat4", "roam_nat"} {
		m, err := ebpf.LoadPinnedMap(pin+"/"+name, nil)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open roam's %s: %w", name, err)
		}
		p.close = append(p.close, m.Close)
		flowMaps = append(flowMaps, m)
	}
	p.flush = func() error {
		var errs []error
		for _, m := range flowMaps {
			errs = append(errs, clearMap(m))
		}
		return errors.Join(errs...)
	}
	p.entries = func() (int, error) {
		n4, err := countMap(flowMaps[0])
		if err != nil {
			return 0, err
		}
		n6, err := countMap(flowMaps[1])
		return n4 + n6, err
	}
	p.drops = func() (map[string]uint64, error) {
		d, err := dp.Drops()
		maps.DeleteFunc(d, func(_ string, n uint64) bool { return n == 0 })
		return d, err
	}
	p.gcSweep = func() (time.Duration, error) {
		start := time.Now()
		for {
			st, err := dp.GC(dataplane.DefaultGCScan)
			if err != nil || st.Wrapped {
				return time.Since(start), err
			}
		}
	}
	return p, nil
}

// setupFloor is the floor under any forwarder's figure with many flows:
// bench_floor (bpf/pktgen.c) on h0, bench_minfwd's rewrite and redirect
// after one read of the flow's entry in a one-read table of slots
// entries of 16 bytes (an array map: no bucket before the entry), to h1.
// It keeps no state (the table is never written), so it needs no prefill
// and no flush.
func setupFloor(ctx context.Context, sfx string, frontends uint32, slots int) (*path, error) {
	p, err := newPath(ctx, "floor", "(f) one read + rewrite (floor)", sfx, frontends, false)
	if err != nil {
		return nil, err
	}
	spec, err := loadPktgen()
	if err != nil {
		p.Close()
		return nil, err
	}
	spec.Maps["floor_table"].MaxEntries = uint32(slots)
	var objs pktgenObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		p.Close()
		return nil, fmt.Errorf("load bench_floor: %w", err)
	}
	p.close = append(p.close, objs.Close)
	var h1 int
	err = netns.Do(p.topo.home, func() error {
		l, err := netlink.LinkByName("h1")
		if err == nil {
			h1 = l.Attrs().Index
		}
		return err
	})
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("find h1: %w", err)
	}
	mc := pktgenMinfwdConfig{Sport: htons(33333), Dport: htons(tport0), Ifindex: uint32(h1), FloorMask: uint32(slots - 1)}
	copy(mc.Macs[:6], macA0)
	copy(mc.Macs[6:], macH1)
	// Addresses as on the wire: the words' bytes in memory order. IPv4
	// and IPv6 frames take the same configuration: IPv4 reads the first
	// word of each, so the path serves one family at a time (expect).
	p.floorCfg = func(f fam) error {
		src, dst := snatAddr[f].AsSlice(), targetAddr[f].AsSlice()
		for i := range mc.Saddr {
			mc.Saddr[i], mc.Daddr[i] = 0, 0
		}
		for i := 0; i < len(src); i += 4 {
			mc.Saddr[i/4], mc.Daddr[i/4] = binary.LittleEndian.Uint32(src[i:]), binary.LittleEndian.Uint32(dst[i:])
		}
		return objs.MinfwdCfg.Put(uint32(0), &mc)
	}
	for _, dev := range []struct {
		name string
		prog *ebpf.Program
	}{{"h0", objs.BenchFloor}, {"h1", p.sink.objs.BenchPass}} {
		l, err := attachProg(p.topo.home, dev.name, dev.prog)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.close = append(p.close, l.Close)
	}
	return p, nil
}

// clearMap deletes every entry of a hash map (any key layout).
func clearMap(m *ebpf.Map) error {
	key := make([]byte, m.KeySize())
	for {
		var keys [][]byte
		it := m.Iterate()
		val := make([]byte, m.ValueSize())
		for it.Next(&key, &val) && len(keys) < 65536 {
			keys = append(keys, append([]byte(nil), key...))
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("walk %s: %w", m, err)
		}
		if len(keys) == 0 {
			return nil
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from %s: %w", m, err)
			}
		}
	}
}

// countMap counts a hash map's entries.
func countMap(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("walk %s: %w", m, err)
	}
	return n, nil
}

// setupUserspace is a Go UDP proxy on the home node (one frontend per
// family), in its own process on the measured CPU.
func setupUserspace(ctx context.Context, sfx string, cpu int) (*path, error) {
	p, err := newPath(ctx, "userspace", "(d) userspace Go proxy", sfx, 1, false)
	if err != nil {
		return nil, err
	}
	if err := p.passOnHome(); err != nil {
		p.Close()
		return nil, err
	}
	var relays []string
	for _, f := range []fam{v4, v6} {
		relays = append(relays, netip.AddrPortFrom(frontAddr[f], fport0).String()+"="+netip.AddrPortFrom(targetAddr[f], tport0).String())
	}
	px, err := startProxy(ctx, p.topo.home, cpu, relays)
	if err != nil {
		p.Close()
		return nil, err
	}
	p.close = append(p.close, px.Close)
	p.proxy = px
	// The generator hands the proxy a burst, then yields until at most a
	// window of frames is still in the proxy's socket.
	p.pace = pace{burst: 256, window: 1024}
	return p, nil
}

// setupNetfilter is the kernel's NAT with conntrack, as kube-proxy
// programs it: with iptables (a services chain, one DNAT rule per
// frontend, SNAT of DNATed connections) or with nftables (one rule and a
// map from frontend port to target, kube-proxy's nftables mode's idea).
//
// Conntrack is set up for a node that has many flows: UDP entries live 10
// minutes, and checksums are not verified by conntrack (as with a NIC's
// receive checksum offload; veth frames carry none, and checking them in
// software would make the kernel paths look slower than on a real node).
func setupNetfilter(ctx context.Context, kind, sfx string, frontends uint32) (*path, error) {
	title := "(b) iptables DNAT+SNAT, conntrack"
	if kind == "nftables" {
		title = "(c) nftables DNAT+SNAT, conntrack"
	}
	p, err := newPath(ctx, kind, title, sfx, frontends, false)
	if err != nil {
		return nil, err
	}
	if err := p.passOnHome(); err != nil {
		p.Close()
		return nil, err
	}
	type load struct {
		tool, rules string
	}
	var loads []load
	if kind == "iptables" {
		loads = []load{{"iptables-restore", iptablesRules(v4, frontends)}, {"ip6tables-restore", iptablesRules(v6, frontends)}}
	} else {
		loads = []load{{"nft", nftRules(frontends)}}
	}
	for _, l := range loads {
		args := []string{"netns", "exec", p.topo.home, l.tool}
		if l.tool == "nft" {
			args = append(args, "-f", "-")
		}
		cmd := exec.CommandContext(ctx, "ip", args...)
		cmd.Stdin = strings.NewReader(l.rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			p.Close()
			return nil, fmt.Errorf("%s in %s: %w: %s", l.tool, p.topo.home, err, out)
		}
	}
	err = setSysctls(p.topo.home, map[string]string{
		"net.netfilter.nf_conntrack_udp_timeout":        "600",
		"net.netfilter.nf_conntrack_udp_timeout_stream": "600",
		"net.netfilter.nf_conntrack_checksum":           "0",
	})
	if err != nil {
		p.Close()
		return nil, err
	}
	home := p.topo.home
	p.flush = func() error { return flushConntrack(home) }
	p.entries = func() (int, error) { return conntrackCount(home) }
	return p, nil
}

func iptablesRules(f fam, frontends uint32) string {
	var b strings.Builder
	b.WriteString("*nat\n:RB-SERVICES - [0:0]\n-A PREROUTING -j RB-SERVICES\n")
	for i := range frontends {
		t := netip.AddrPortFrom(targetAddr[f], tport0+uint16(i))
		fmt.Fprintf(&b, "-A RB-SERVICES -d %s -p udp -m udp --dport %d -j DNAT --to-destination %s\n",
			netip.PrefixFrom(frontAddr[f], frontAddr[f].BitLen()), fport0+i, t)
	}
	fmt.Fprintf(&b, "-A POSTROUTING -m conntrack --ctstate DNAT -j SNAT --to-source %s\nCOMMIT\n", snatAddr[f])
	return b.String()
}

func nftRules(frontends uint32) string {
	var b strings.Builder
	b.WriteString("table inet rb {\n")
	for _, f := range []fam{v4, v6} {
		fmt.Fprintf(&b, "\tmap svc%d {\n\t\ttype inet_service : %s . inet_service\n\t\telements = { ", 4+2*f, [...]string{"ipv4_addr", "ipv6_addr"}[f])
		for i := range frontends {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%d : %s . %d", fport0+i, targetAddr[f], tport0+i)
		}
		b.WriteString(" }\n\t}\n")
	}
	fmt.Fprintf(&b, "\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"+
		"\t\tip daddr %s dnat ip to udp dport map @svc4\n\t\tip6 daddr %s dnat ip6 to udp dport map @svc6\n\t}\n",
		frontAddr[v4], frontAddr[v6])
	fmt.Fprintf(&b, "\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"+
		"\t\tct status dnat meta nfproto ipv4 snat ip to %s\n\t\tct status dnat meta nfproto ipv6 snat ip6 to %s\n\t}\n}\n",
		snatAddr[v4], snatAddr[v6])
	return b.String()
}

// flushConntrack deletes every conntrack entry of ns, both families.
func flushConntrack(ns string) error {
	return netns.Do(ns, func() error {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
			req.AddData(&nl.Nfgenmsg{NfgenFamily: family, Version: nl.NFNETLINK_V0})
			if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil {
				return fmt.Errorf("flush conntrack in %s: %w", ns, err)
			}
		}
		return nil
	})
}

// conntrackCount is the number of conntrack entries of ns.
func conntrackCount(ns string) (int, error) {
	n := 0
	err := netns.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		n, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return n, err
}
