// Command dataplane (make bench-dataplane, root) compares, in one run on the
// same network namespaces (dataplane/e2e's client → home → abroad), three
// ways a home node can send a frontend's traffic abroad:
//
//	(a) roam's XDP redirector (native XDP on the home node's veths),
//	(b) iptables DNAT+SNAT with conntrack (what kube-proxy does),
//	(c) a userspace Go proxy (TCP and UDP).
//
// It prints the XDP program's own cost per packet (BPF_PROG_TEST_RUN with
// repeat), UDP packets per second received (iperf3 -u -l 64 -b 0) and TCP
// throughput (iperf3) through each, the ratios, a table, and as the very
// last line one JSON object with the figures.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/e2e"
)

const iperfPort = 5201

func main() {
	dur := flag.Duration("duration", 8*time.Second, "length of each iperf3 run")
	repeat := flag.Int("repeat", 1_000_000, "BPF_PROG_TEST_RUN repeat count")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *dur, *repeat); err != nil {
		slog.Error("bench-dataplane", "err", err)
		os.Exit(1)
	}
}

type result struct {
	NsPerPacket         float64 `json:"ns_per_packet"`
	PPSXDP              float64 `json:"pps_xdp"`
	PPSIptables         float64 `json:"pps_iptables"`
	PPSUserspace        float64 `json:"pps_userspace"`
	GbpsXDP             float64 `json:"gbps_xdp"`
	GbpsIptables        float64 `json:"gbps_iptables"`
	GbpsUserspace       float64 `json:"gbps_userspace"`
	RatioXDPIptables    float64 `json:"ratio_xdp_iptables"`
	RatioXDPUserspace   float64 `json:"ratio_xdp_userspace"`
	RatioGbpsIptables   float64 `json:"ratio_gbps_xdp_iptables"`
	RatioGbpsUserspace  float64 `json:"ratio_gbps_xdp_userspace"`
	UDPLossXDP          float64 `json:"udp_loss_pct_xdp"`
	UDPLossIptables     float64 `json:"udp_loss_pct_iptables"`
	UDPLossUserspace    float64 `json:"udp_loss_pct_userspace"`
	IperfSecondsPerTest float64 `json:"iperf_seconds"`
}

func run(ctx context.Context, dur time.Duration, repeat int) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespaces, XDP, bpffs, iptables)")
	}
	for _, tool := range []string{"ip", "iperf3", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("find %s: %w (make deps)", tool, err)
		}
	}
	topo, err := e2e.NewTopology()
	if err != nil {
		return err
	}
	defer topo.Close()
	fmt.Fprintf(os.Stderr, "namespaces %s, %s, %s\n", topo.Client, topo.Home, topo.Abroad)

	stopIperf, err := e2e.StartIperfServer(ctx, topo.Abroad, e2e.AbroadAddr1.String(), iperfPort)
	if err != nil {
		return err
	}
	defer stopIperf()
	target := netip.AddrPortFrom(e2e.AbroadAddr1, iperfPort)

	// (a) XDP: frontends :80/tcp and :80/udp → abroad iperf3.
	pin := "/sys/fs/bpf/roam-bench-" + topo.Suffix
	dp, err := dataplane.Open(dataplane.Config{PinPath: pin, SNATv4: e2e.HomeWAN, IdleTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer dataplane.Unpin(pin)
	defer dp.Close()
	err = e2e.InNS(topo.Home, func() error {
		for _, ifc := range []string{"h0", "h1"} {
			if err := dp.AttachXDP(ifc, dataplane.XDPNative); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range []dataplane.Proto{dataplane.TCP, dataplane.UDP} {
		f := dataplane.Frontend{Addr: e2e.HomeAddr, Port: 80, Proto: p}
		gen, err := dp.Stage(f, dataplane.Redirect(target))
		if err != nil {
			return err
		}
		if err := dp.Commit(f, gen); err != nil {
			return err
		}
	}

	var res result
	res.IperfSecondsPerTest = dur.Seconds()
	var cost dataplane.BenchResult
	err = e2e.InNS(topo.Home, func() (err error) {
		cost, err = progCost(repeat)
		return err
	})
	if err != nil {
		return fmt.Errorf("measure program cost: %w", err)
	}
	res.NsPerPacket = float64(cost.PerPacket.Nanoseconds())
	fmt.Fprintf(os.Stderr, "xdp program: %.1f ns/packet (an empty XDP program: %s)\n", res.NsPerPacket, cost.Baseline)

	if res.PPSXDP, res.UDPLossXDP, err = udpPPS(ctx, topo, 80, dur); err != nil {
		return fmt.Errorf("xdp udp: %w (%s)", err, xdpState(dp))
	}
	if res.GbpsXDP, err = tcpGbps(ctx, topo, 80, dur); err != nil {
		return fmt.Errorf("xdp tcp: %w (%s)", err, xdpState(dp))
	}
	fmt.Fprintf(os.Stderr, "xdp: %.0f pps, %.2f Gbit/s\n", res.PPSXDP, res.GbpsXDP)

	// The kernel paths run on the same interfaces, roam's program swapped
	// for a bare XDP_PASS: frames stay MTU-sized on every veth, as on a real
	// wire, and the kernel still aggregates them with GRO on receive.
	err = e2e.InNS(topo.Home, func() error {
		return errors.Join(dp.Detach("h0"), dp.Detach("h1"))
	})
	if err != nil {
		return err
	}
	for _, ifc := range []string{"h0", "h1"} {
		if err := e2e.AttachPass(topo.Home, ifc); err != nil {
			return err
		}
	}

	// (b) iptables: :81 DNAT to the target, SNAT to the home node's address.
	fe81 := e2e.HomeAddr.String()
	for _, rule := range [][]string{
		{"-t", "nat", "-A", "PREROUTING", "-d", fe81, "-p", "tcp", "--dport", "81", "-j", "DNAT", "--to-destination", target.String()},
		{"-t", "nat", "-A", "PREROUTING", "-d", fe81, "-p", "udp", "--dport", "81", "-j", "DNAT", "--to-destination", target.String()},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", e2e.HomeWAN.String()},
	} {
		if out, err := e2e.Cmd(ctx, topo.Home, "iptables", rule...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %v: %w: %s", rule, err, out)
		}
	}
	if res.PPSIptables, res.UDPLossIptables, err = udpPPS(ctx, topo, 81, dur); err != nil {
		return fmt.Errorf("iptables udp: %w", err)
	}
	if res.GbpsIptables, err = tcpGbps(ctx, topo, 81, dur); err != nil {
		return fmt.Errorf("iptables tcp: %w", err)
	}
	fmt.Fprintf(os.Stderr, "iptables: %.0f pps, %.2f Gbit/s\n", res.PPSIptables, res.GbpsIptables)

	// (c) userspace Go proxy on :82.
	proxy, err := startProxy(topo, netip.AddrPortFrom(e2e.HomeAddr, 82), target)
	if err != nil {
		return err
	}
	defer proxy.Close()
	if res.PPSUserspace, res.UDPLossUserspace, err = udpPPS(ctx, topo, 82, dur); err != nil {
		return fmt.Errorf("userspace udp: %w", err)
	}
	if res.GbpsUserspace, err = tcpGbps(ctx, topo, 82, dur); err != nil {
		return fmt.Errorf("userspace tcp: %w", err)
	}
	fmt.Fprintf(os.Stderr, "userspace: %.0f pps, %.2f Gbit/s\n", res.PPSUserspace, res.GbpsUserspace)

	res.RatioXDPIptables = ratio(res.PPSXDP, res.PPSIptables)
	res.RatioXDPUserspace = ratio(res.PPSXDP, res.PPSUserspace)
	res.RatioGbpsIptables = ratio(res.GbpsXDP, res.GbpsIptables)
	res.RatioGbpsUserspace = ratio(res.GbpsXDP, res.GbpsUserspace)

	fmt.Printf("\nroam data plane benchmark (one run, same namespaces, iperf3 %s per figure)\n\n", dur)
	fmt.Printf("XDP program alone (BPF_PROG_TEST_RUN x %d, established TCP flow, verdict %d): %.1f ns/packet\n", repeat, cost.Verdict, res.NsPerPacket)
	fmt.Printf("  (an empty XDP program measured the same way: %s/packet)\n\n", cost.Baseline)
	fmt.Printf("%-28s %16s %10s %14s\n", "path", "UDP 64 B pps", "UDP loss", "TCP Gbit/s")
	fmt.Printf("%-28s %16.0f %9.1f%% %14.2f\n", "(a) XDP redirector", res.PPSXDP, res.UDPLossXDP, res.GbpsXDP)
	fmt.Printf("%-28s %16.0f %9.1f%% %14.2f\n", "(b) iptables DNAT+SNAT", res.PPSIptables, res.UDPLossIptables, res.GbpsIptables)
	fmt.Printf("%-28s %16.0f %9.1f%% %14.2f\n", "(c) userspace Go proxy", res.PPSUserspace, res.UDPLossUserspace, res.GbpsUserspace)
	fmt.Printf("%-28s %15.2fx %10s %13.2fx\n", "XDP / iptables", res.RatioXDPIptables, "", res.RatioGbpsIptables)
	fmt.Printf("%-28s %15.2fx %10s %13.2fx\n", "XDP / userspace", res.RatioXDPUserspace, "", res.RatioGbpsUserspace)
	fmt.Printf("\nall paths on the same veths, each with an XDP program on both ends (MTU-sized frames as on a wire);\n"+
		"the iperf3 figures are end to end: sender, receiver and forwarder share this machine's %d CPUs,\n"+
		"so where the endpoints saturate first the ratios understate the forwarding difference.\n\n", runtime.NumCPU())
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// progCost runs an established flow's packet through the XDP program with
// BPF_PROG_TEST_RUN and the kernel's repeat, through A's helper (on private
// maps, NAT set up as an identity so every repeat takes the full
// established-flow path). It runs in the home namespace, whose route and
// neighbour towards the abroad address make the fib lookup succeed.
func progCost(repeat int) (dataplane.BenchResult, error) {
	pkt, err := tcpPacket()
	if err != nil {
		return dataplane.BenchResult{}, err
	}
	return dataplane.BenchXDPDetail(pkt, repeat)
}

// tcpPacket is an established TCP flow's data segment (64 bytes of payload)
// from the client towards the abroad address.
func tcpPacket() ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: e2e.ClientAddr.AsSlice(), DstIP: e2e.AbroadAddr1.AsSlice()}
	tcp := &layers.TCP{SrcPort: 33333, DstPort: iperfPort, Seq: 1000, Ack: 2000, Window: 64240, ACK: true, PSH: true}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(make([]byte, 64)))
	if err != nil {
		return nil, fmt.Errorf("build packet: %w", err)
	}
	return buf.Bytes(), nil
}

type iperfJSON struct {
	End struct {
		Sum struct {
			Seconds     float64 `json:"seconds"`
			Packets     float64 `json:"packets"`
			LostPackets float64 `json:"lost_packets"`
			LostPercent float64 `json:"lost_percent"`
		} `json:"sum"`
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

func iperf(ctx context.Context, topo *e2e.Topology, port int, dur time.Duration, extra ...string) (iperfJSON, error) {
	args := append([]string{"-c", e2e.HomeAddr.String(), "-p", strconv.Itoa(port), "-t", strconv.Itoa(int(dur.Seconds())),
		"-J", "--connect-timeout", "5000"}, extra...)
	var out, stderr bytes.Buffer
	cmd := e2e.Cmd(ctx, topo.Client, "iperf3", args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	runErr := cmd.Run()
	var r iperfJSON
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return r, fmt.Errorf("iperf3 %v: %v: %s %s", args, runErr, out.String(), stderr.String())
	}
	if runErr != nil || r.Error != "" {
		return r, fmt.Errorf("iperf3 %v: %v %s", args, runErr, r.Error)
	}
	return r, nil
}

// udpPPS is the packets per second the abroad server received.
func udpPPS(ctx context.Context, topo *e2e.Topology, port int, dur time.Duration) (pps, lossPct float64, err error) {
	r, err := iperf(ctx, topo, port, dur, "-u", "-l", "64", "-b", "0")
	if err != nil {
		return 0, 0, err
	}
	if r.End.Sum.Seconds == 0 {
		return 0, 0, errors.New("iperf3 reported no UDP interval")
	}
	return (r.End.Sum.Packets - r.End.Sum.LostPackets) / r.End.Sum.Seconds, r.End.Sum.LostPercent, nil
}

func tcpGbps(ctx context.Context, topo *e2e.Topology, port int, dur time.Duration) (float64, error) {
	r, err := iperf(ctx, topo, port, dur)
	if err != nil {
		return 0, err
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// proxy is the userspace baseline: a Go TCP and UDP relay in the home namespace.
type proxy struct {
	ln net.Listener
	pc net.PacketConn
	wg sync.WaitGroup
}

func startProxy(topo *e2e.Topology, listen, target netip.AddrPort) (*proxy, error) {
	ln, err := e2e.Listen(topo.Home, "tcp", listen.String())
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s: %w", listen, err)
	}
	pc, err := e2e.ListenPacket(topo.Home, "udp", listen.String())
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen udp %s: %w", listen, err)
	}
	p := &proxy{ln: ln, pc: pc}
	dial := e2e.Dialer(topo.Home)
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := dial(context.Background(), "tcp", target.String())
				if err != nil {
					c.Close()
					return
				}
				e2e.Splice(c, up)
			}()
		}
	}()
	go func() {
		defer p.wg.Done()
		sessions := map[string]net.Conn{}
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				for _, s := range sessions {
					s.Close()
				}
				return
			}
			up, ok := sessions[from.String()]
			if !ok {
				up, err = dial(context.Background(), "udp", target.String())
				if err != nil {
					continue
				}
				sessions[from.String()] = up
				go func(up net.Conn, client net.Addr) {
					b := make([]byte, 65536)
					for {
						n, err := up.Read(b)
						if err != nil {
							return
						}
						_, _ = pc.WriteTo(b[:n], client)
					}
				}(up, from)
			}
			_, _ = up.Write(buf[:n])
		}
	}()
	return p, nil
}

func (p *proxy) Close() {
	p.ln.Close()
	p.pc.Close()
	p.wg.Wait()
}

// xdpState summarises the data plane's counters, to explain a failed run.
func xdpState(dp *dataplane.Dataplane) string {
	out := ""
	if drops, err := dp.Drops(); err == nil {
		for r, n := range drops {
			if n > 0 {
				out += fmt.Sprintf("drop %s=%d ", r, n)
			}
		}
	}
	for _, p := range []dataplane.Proto{dataplane.TCP, dataplane.UDP} {
		f := dataplane.Frontend{Addr: e2e.HomeAddr, Port: 80, Proto: p}
		for a := dataplane.ActionPass; a <= dataplane.ActionDrop; a++ {
			if c, err := dp.Counters(f, a); err == nil && c.Packets > 0 {
				out += fmt.Sprintf("%s %s=%d ", f, a, c.Packets)
			}
		}
	}
	return out
}
