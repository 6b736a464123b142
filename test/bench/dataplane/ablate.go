package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/test/netns"
)

// An ablation is roam's XDP program built with some stages switched off
// (ROAM_ABLATE bits, bpf/consts.h): what it saves is what the stages cost.
type ablation struct {
	name string
	bits string // -DROAM_ABLATE=
}

var ablations = []ablation{
	{"as built", "0"},
	{"without the next-hop cache (bpf_fib_lookup every packet)", "ABLATE_NH_CACHE"},
	{"without bpf_fib_lookup (XDP_TX, MACs untouched)", "ABLATE_FIB"},
	{"without the per-frontend and per-target counters", "ABLATE_COUNTERS"},
	{"without the per-target counters", "ABLATE_TARGET_COUNTERS"},
	{"without checksum arithmetic", "ABLATE_CSUM"},
	{"without the clock (bpf_ktime_get_coarse_ns)", "ABLATE_CLOCK"},
	{"without all four", "ABLATE_FIB|ABLATE_COUNTERS|ABLATE_CSUM|ABLATE_CLOCK"},
	{"without SRv6 (no srv6_input before the NAT path)", "ABLATE_SRV6"},
}

// runAblations compiles bpf/roam.c once per ablation (clang, the flags of
// make generate: $BPF_CLANG, $BPF_CFLAGS), loads every build side by side and measures them in
// turn under BPF_PROG_TEST_RUN with repeat, rounds times, in a namespace
// with the XDP path's routes and static neighbours (so the fib lookup
// succeeds). Builds are interleaved so the machine's drift hits them
// alike; the figure is the minimum over rounds (the least disturbed),
// with the median beside it.
func runAblations(ctx context.Context, o options) error {
	clang := os.Getenv("BPF_CLANG")
	if clang == "" {
		clang = "clang"
	}
	ablations := ablations
	if o.ablateOnly != "" {
		ablations = slices.DeleteFunc(slices.Clone(ablations), func(a ablation) bool { return !strings.Contains(a.name, o.ablateOnly) })
	}
	srcs := make([]string, len(ablations)) // each build's C sources
	for i := range srcs {
		srcs[i] = o.bpfDir
	}
	for _, d := range strings.Split(o.ablateSrc, ",") {
		if d != "" {
			ablations = append(slices.Clip(ablations), ablation{"as built in " + d, "0"})
			srcs = append(srcs, d)
		}
	}
	cflags := os.Getenv("BPF_CFLAGS") // make's, with the multiarch include directory
	if cflags == "" {
		cflags = "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu"
	}
	dir, err := os.MkdirTemp("", "roam-ablate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	specs := make([]*ebpf.CollectionSpec, len(ablations))
	for i, a := range ablations {
		obj := filepath.Join(dir, fmt.Sprintf("xdp%d.o", i))
		src := srcs[i]
		main := filepath.Join(src, "roam.c")
		if _, err := os.Stat(main); err != nil {
			main = filepath.Join(src, "xdp.c") // before one object held both programs (c9ad0e4)
		}
		args := append(strings.Fields(cflags), "-target", "bpfel", "-mcpu=v3",
			"-I"+src, "-DROAM_ABLATE=("+a.bits+")", "-c", main, "-o", obj)
		if out, err := exec.CommandContext(ctx, clang, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("compile %q: %w\n%s", a.name, err, out)
		}
		if specs[i], err = ebpf.LoadCollectionSpec(obj); err != nil {
			return fmt.Errorf("load %q: %w", a.name, err)
		}
	}
	t, err := newTopo("abl", netns.RandSuffix(3))
	if err != nil {
		return err
	}
	defer t.close()
	pkts := map[string][]byte{}
	var kinds []string
	for _, f := range []fam{v4, v6} {
		for _, proto := range []string{"TCP", "UDP"} {
			pkt, err := benchPacket(f, proto == "TCP")
			if err != nil {
				return err
			}
			k := f.String() + " " + proto
			kinds = append(kinds, k)
			pkts[k] = pkt
		}
	}
	k0, k1, err := t.holdIfaces()
	if err != nil {
		return err
	}
	ns := make([]map[string][]float64, len(ablations))
	insns := make([]int, len(ablations))
	err = onCPU(t.home, o.cpu, func() error {
		benches := make([]map[string]*dataplane.XDPBench, len(ablations))
		defer func() {
			for _, m := range benches {
				for _, b := range m {
					b.Close()
				}
			}
		}()
		for i := range ablations {
			benches[i] = map[string]*dataplane.XDPBench{}
			ns[i] = map[string][]float64{}
			for _, k := range kinds {
				b, err := dataplane.NewXDPBench(specs[i].Copy(), pkts[k])
				if err != nil {
					return fmt.Errorf("%q: %w", ablations[i].name, err)
				}
				b.HoldOn(k0, k1)
				benches[i][k] = b
			}
		}
		for r := range o.ablateRounds {
			if err := ctx.Err(); err != nil {
				return err
			}
			for i := range ablations {
				for _, k := range kinds {
					res, err := benches[i][k].Run(o.ablateRepeat)
					if err != nil {
						return fmt.Errorf("%q %s: %w", ablations[i].name, k, err)
					}
					ns[i][k] = append(ns[i][k], float64(res.PerPacket.Nanoseconds()))
					insns[i] = res.Insns
				}
			}
			slog.Debug("ablation round", "round", r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("\nroam_xdp ablations: BPF_PROG_TEST_RUN x %d, %d rounds interleaved, CPU %d; ns/packet min (median), established flow\n\n",
		o.ablateRepeat, o.ablateRounds, o.cpu)
	width := 58
	for _, a := range ablations {
		width = max(width, len(a.name))
	}
	fmt.Printf("%-*s", width, "build")
	for _, k := range kinds {
		fmt.Printf(" %14s", k)
	}
	fmt.Printf(" %7s\n", "insns")
	for i, a := range ablations {
		fmt.Printf("%-*s", width, a.name)
		for _, k := range kinds {
			fmt.Printf(" %14s", fmt.Sprintf("%.0f (%.0f)", slices.Min(ns[i][k]), median(ns[i][k])))
		}
		fmt.Printf(" %7d\n", insns[i])
	}
	return ctLookupByKeySize(ctx, o, t.home, pkts["IPv4 TCP"])
}

// ctLookupByKeySize measures a conntrack lookup alone (bench_ct40,
// bench_ct16: bpf/pktgen.c) with roam's 40-byte key and a compact 16-byte
// IPv4 key, the packet's flow in each map, interleaved as the builds
// above, and bench_drop (an empty program) beside them.
func ctLookupByKeySize(ctx context.Context, o options, ns string, pkt []byte) error {
	var objs pktgenObjects
	if err := loadPktgenObjects(&objs, nil); err != nil {
		return fmt.Errorf("load bench_ct40, bench_ct16: %w", err)
	}
	defer objs.Close()
	// Addresses, ports and protocol as on the wire (Ethernet, IPv4 without options).
	saddr, daddr, ports, proto := pkt[26:30], pkt[30:34], pkt[34:38], pkt[23]
	k40 := make([]byte, 40)
	k40[10], k40[11], k40[26], k40[27] = 0xff, 0xff, 0xff, 0xff
	copy(k40[12:], saddr)
	copy(k40[28:], daddr)
	copy(k40[32:], ports)
	k40[36], k40[37] = proto, 4
	k16 := make([]byte, 16)
	copy(k16, saddr)
	copy(k16[4:], daddr)
	copy(k16[8:], ports)
	k16[12], k16[13] = proto, 4
	val := make([]byte, 80)
	if err := objs.Ct40.Put(k40, val); err != nil {
		return err
	}
	if err := objs.Ct16.Put(k16, val); err != nil {
		return err
	}
	progs := []struct {
		name string
		prog *ebpf.Program
		want uint32
	}{{"40-byte key (roam's)", objs.BenchCt40, xdpDrop}, {"16-byte key (compact IPv4)", objs.BenchCt16, xdpDrop}, {"an empty program", objs.BenchDrop, xdpDrop}}
	ns2 := make([][]float64, len(progs))
	err := onCPU(ns, o.cpu, func() error {
		for range o.ablateRounds {
			if err := ctx.Err(); err != nil {
				return err
			}
			for i, p := range progs {
				v, d, err := p.prog.Benchmark(pkt, o.ablateRepeat, nil)
				if err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
				if v != p.want {
					return fmt.Errorf("%s: verdict %d, want %d (the flow not found?)", p.name, v, p.want)
				}
				ns2[i] = append(ns2[i], float64(d.Nanoseconds()))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("\na conntrack lookup alone (hash map, not preallocated, 262,144 entries; bench_ct40, bench_ct16), IPv4 TCP, ns/packet min (median):\n")
	for i, p := range progs {
		fmt.Printf("  %-30s %.1f (%.1f)\n", p.name, slices.Min(ns2[i]), median(ns2[i]))
	}
	return nil
}
