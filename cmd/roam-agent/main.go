// Command roam-agent runs on every node: it loads and attaches roam's XDP and
// tc programs (pinned, so traffic keeps flowing while it restarts), serves
// /metrics and /healthz, and exposes the two-phase stage/commit API a
// controller drives (package dataplane/agentapi).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/internal/schedslice"
)

type options struct {
	ifaces     []string
	tcIfaces   []string
	xdpMode    string
	pinPath    string
	snat4      netip.Addr
	snat6      netip.Addr
	snat4Count int
	snat6Count int
	synEvict   time.Duration
	synProxy   dataplane.SYNProxyMode
	// preallocFlows: the conntrack and NAT maps preallocated (dataplane.Config.PreallocFlows).
	preallocFlows bool
	portMin       uint16
	portMax       uint16
	idleTimeout   time.Duration
	udpDrain      time.Duration
	gcInterval    time.Duration
	gcScan        int
	metricsAddr   string
	apiAddr       string
	tlsDir        string
	insecure      bool
	srv6          dataplane.SRv6Config
	slice         time.Duration
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("roam-agent", flag.ContinueOnError)
	ifaces := fs.String("iface", "", "comma list of interfaces to attach the XDP program to (and the tc program: XDP hands it a packet whose next hop has no neighbour yet)")
	tcIfaces := fs.String("tc-iface", "", "comma list of further interfaces to attach the tc program to (local pods' veths)")
	fs.StringVar(&o.xdpMode, "xdp-mode", "native", "XDP attach mode: native or generic")
	fs.StringVar(&o.pinPath, "pin-path", "/sys/fs/bpf/roam", "bpffs directory where maps, programs and links are pinned")
	snat := fs.String("snat-addr", "", "comma list of source addresses for redirected flows, at most one pool per family: an address, FIRST-LAST, or PREFIX/LEN "+
		"(every address of a pool must be routed to this node; a flow takes an address and a port of the pool x --snat-ports)")
	ports := fs.String("snat-ports", "40000-60999", "source port range for redirected flows")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 60*time.Second, "a UDP flow with no packet either way for this long is over (TCP flows time out by state: dataplane.DefaultTimeouts)")
	fs.DurationVar(&o.synEvict, "syn-evict", dataplane.DefaultTimeouts.SYNEvict, "an embryonic TCP flow whose client and target have both been silent this long gives its SNAT port to a new flow that needs it (a SYN flood's flows; counted as drops reason syn_evicted)")
	synProxy := fs.String("syn-proxy", "flood", "when XDP answers SYNs to redirected frontends itself with SYN cookies, so a spoofed SYN costs no SNAT port and never reaches the target: "+
		"flood (for 10 s after SNAT ports came under pressure, as tcp_syncookies=1), always, or off; proxied flows have MSS but no window scaling, SACK or timestamps")
	fs.DurationVar(&o.udpDrain, "udp-drain", dataplane.DefaultTimeouts.UDPDrain, "a UDP flow idle this long once a commit moved its frontend away is done: a migration's drain stops waiting for it")
	fs.BoolVar(&o.preallocFlows, "prealloc-flows", true, "preallocate the conntrack and NAT maps (~330 bytes per flow of their capacity at start, 86 MB for 262,144 flows) "+
		"instead of allocating an entry per new flow: bench-dataplane measured new flows 1.5-2.4x as fast (established flows mostly faster, 1M flows mixed); "+
		"fixed when the maps are first pinned: over maps pinned the other way (an upgrade) the agent keeps them and their flows and logs it; "+
		"changing it needs the maps unpinned (rm -r the --pin-path directory), which drops the node's flows")
	fs.DurationVar(&o.gcInterval, "gc-interval", 10*time.Second, "how often expired conntrack and NAT entries are removed (a pass that did not reach a map's end continues at once)")
	fs.IntVar(&o.gcScan, "gc-scan", dataplane.DefaultGCScan, "at most this many entries of each map read per garbage-collection pass")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":9700", "address serving /metrics and /healthz")
	fs.StringVar(&o.apiAddr, "api-addr", "127.0.0.1:9701", "address serving the two-phase agent API")
	fs.StringVar(&o.tlsDir, "tls-dir", "", "this node's identity (ca.crt, tls.crt, tls.key for spiffe://roam/cluster/<id>/node/<node>; roamctl cert issue --node): "+
		"the agent API then takes mutual TLS and only its cluster's controller; re-read when the files change")
	fs.BoolVar(&o.insecure, "insecure", false, "serve the agent API without authentication (plain HTTP; tests only)")
	sid := fs.String("srv6-sid", "", "this node's SRv6 SID: lb.NodeSID(cluster's locator, n), n its place in roam-ctrl's --agents (node 0 first; roam-ctrl checks it); empty: SRv6 path mode off")
	locs := fs.String("srv6-locators", "", "comma list of roam's SRv6 locators, every cluster's (the only SIDs accepted)")
	fs.IntVar(&o.srv6.MTU, "srv6-mtu", dataplane.DefaultSRv6MTU, "the underlay MTU between clusters: SYNs are MSS-clamped to fit the encapsulation")
	fs.DurationVar(&o.srv6.PreviousHold, "srv6-previous-hold", dataplane.DefaultSRv6PreviousHold, "after a move back home, how long the connections opened along the previous SRv6 path at most stay on it "+
		"(until the old location says its copy is gone): must outlast roam-ctrl's --drain-timeout; after it such a connection's packet is the home copy's")
	fs.DurationVar(&o.slice, "sched-slice", 0, "the scheduler slice the agent's threads ask for (Linux 6.12 and later; 0: the kernel's default; else 100µs to 100ms): "+
		"a short one lets an API call woken on a busy node preempt the running thread instead of waiting out its slice (bench-migration measures 100µs beside the default)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if err := schedslice.Check(o.slice); err != nil {
		return o, fmt.Errorf("parse flags: --sched-slice: %w", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("parse flags: unexpected arguments %q", fs.Args())
	}
	o.ifaces = splitList(*ifaces)
	// The tc program runs on every XDP interface too: XDP passes it a
	// packet whose next hop has no neighbour, and tc resolves it
	// (bpf_redirect_neigh).
	o.tcIfaces = splitList(*ifaces)
	for _, ifc := range splitList(*tcIfaces) {
		if !slices.Contains(o.tcIfaces, ifc) {
			o.tcIfaces = append(o.tcIfaces, ifc)
		}
	}
	if o.xdpMode != "native" && o.xdpMode != "generic" {
		return o, fmt.Errorf("parse flags: --xdp-mode %q: want native or generic", o.xdpMode)
	}
	for _, s := range splitList(*snat) {
		a, n, err := dataplane.ParseSNATPool(s)
		if err != nil {
			return o, fmt.Errorf("parse flags: --snat-addr: %w", err)
		}
		switch {
		case a.Is4() && !o.snat4.IsValid():
			o.snat4, o.snat4Count = a, n
		case a.Is6() && !o.snat6.IsValid():
			o.snat6, o.snat6Count = a, n
		default:
			return o, fmt.Errorf("parse flags: --snat-addr: at most one IPv4 and one IPv6 pool, got %q", *snat)
		}
	}
	lo, hi, ok := strings.Cut(*ports, "-")
	pmin, err1 := strconv.ParseUint(lo, 10, 16)
	pmax, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || pmin == 0 || pmin > pmax {
		return o, fmt.Errorf("parse flags: --snat-ports %q: want MIN-MAX with 0 < MIN <= MAX <= 65535", *ports)
	}
	o.portMin, o.portMax = uint16(pmin), uint16(pmax)
	spm, perr := dataplane.ParseSYNProxyMode(*synProxy)
	if perr != nil {
		return o, fmt.Errorf("parse flags: --syn-proxy: %w", perr)
	}
	o.synProxy = spm
	if o.idleTimeout <= 0 || o.synEvict <= 0 {
		return o, fmt.Errorf("parse flags: --idle-timeout and --syn-evict must be positive")
	}
	if o.gcInterval <= 0 || o.gcScan <= 0 {
		return o, fmt.Errorf("parse flags: --gc-interval and --gc-scan must be positive")
	}
	if o.tlsDir == "" && !o.insecure {
		return o, errors.New("parse flags: the agent API can point any frontend anywhere: give it --tls-dir (roamctl cert issue --node) or, for tests, --insecure")
	}
	if o.srv6.PreviousHold <= 0 {
		return o, fmt.Errorf("parse flags: --srv6-previous-hold %s: must be positive (longer than roam-ctrl's --drain-timeout)", o.srv6.PreviousHold)
	}
	if *sid != "" {
		a, err := netip.ParseAddr(*sid)
		if err != nil {
			return o, fmt.Errorf("parse flags: --srv6-sid: %w", err)
		}
		o.srv6.SID = a
	}
	for _, l := range splitList(*locs) {
		p, err := netip.ParsePrefix(l)
		if err != nil {
			return o, fmt.Errorf("parse flags: --srv6-locators: %w", err)
		}
		o.srv6.Locators = append(o.srv6.Locators, p)
	}
	if err := o.srv6.Validate(); err != nil {
		return o, fmt.Errorf("parse flags: %w", err)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when the pin path lives there and
// nothing is mounted yet.
func ensureBPFFS(pinPath string, log *slog.Logger) error {
	const root = "/sys/fs/bpf"
	if !strings.HasPrefix(filepath.Clean(pinPath)+"/", root+"/") {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("stat %s: %w", root, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpffs", root, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", root, err)
	}
	log.Info("mounted bpffs", "path", root)
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 == nil && err2 == nil && self != init {
		// e.g. under "ip netns exec", which remounts /sys privately.
		log.Warn("bpffs mounted in a private mount namespace: pins will not outlive this process; " +
			"run the agent in the host's mount namespace (nsenter --net=/run/netns/NAME) to keep traffic flowing across restarts")
	}
	return nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		log.Error("roam-agent", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("roam-agent", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if _, err := schedslice.Apply(o.slice); err != nil {
		log.Warn("scheduler slice not set: API calls on a busy node wait for a thread's slice to end", "err", err)
	}
	if err := ensureBPFFS(o.pinPath, log); err != nil {
		return err
	}
	dp, err := dataplane.Open(dataplane.Config{
		SRv6:          o.srv6,
		PinPath:       o.pinPath,
		SNATv4:        o.snat4,
		SNATv6:        o.snat6,
		SNATv4Count:   o.snat4Count,
		SNATv6Count:   o.snat6Count,
		PortMin:       o.portMin,
		PortMax:       o.portMax,
		IdleTimeout:   o.idleTimeout,
		Timeouts:      dataplane.Timeouts{UDPDrain: o.udpDrain, SYNEvict: o.synEvict},
		SYNProxy:      o.synProxy,
		PreallocFlows: o.preallocFlows,
		// The host's own connections stay out of the SNAT ports (reserved
		// if they overlap its ephemeral ports, or the agent refuses to start).
		ReservePorts: true,
	})
	if err != nil {
		return fmt.Errorf("open data plane: %w", err)
	}
	// Close drops our fds only: pins and links stay, traffic keeps flowing.
	defer dp.Close()
	log.Info("flow maps", "prealloc_flows", dp.PreallocFlows(), "prealloc_flows_flag", o.preallocFlows)
	for _, ifc := range o.ifaces {
		if err := dp.AttachXDP(ifc, o.xdpMode); err != nil {
			return fmt.Errorf("attach xdp to %s: %w", ifc, err)
		}
		log.Info("attached xdp", "iface", ifc, "mode", o.xdpMode)
		warnForwarding(ifc, log)
	}
	for _, ifc := range o.tcIfaces {
		if err := dp.AttachTC(ifc); err != nil {
			return fmt.Errorf("attach tc to %s: %w", ifc, err)
		}
		log.Info("attached tc", "iface", ifc)
	}

	// Garbage collection of expired flows; stopped before dp.Close.
	gcCtx, stopGC := context.WithCancel(ctx)
	gcDone := make(chan struct{})
	go func() { defer close(gcDone); dp.RunGC(gcCtx, o.gcInterval, o.gcScan, log) }()
	defer func() { stopGC(); <-gcDone }()

	reg := prometheus.NewRegistry()
	if err := reg.Register(dp.Collector()); err != nil {
		return fmt.Errorf("register data plane collector: %w", err)
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var src *pki.Source
	if o.tlsDir != "" {
		if src, err = pki.Load(o.tlsDir); err != nil {
			return err
		}
		if !src.ID().IsNode() {
			return fmt.Errorf("--tls-dir: %s is not a node's identity (roamctl cert issue --node)", src.ID())
		}
		log.Info("agent API over mutual TLS", "identity", src.ID().String(), "accepts", pki.ID{Cluster: src.ID().Cluster}.String())
	} else {
		log.Warn("--insecure: the agent API takes any caller")
	}
	if o.srv6.SID.IsValid() {
		// What the kernel encapsulates (the copies' answers home) leaves
		// from this node's SID: homes accept SIDs' packets only from
		// roam's locators.
		if err := dataplane.SetSRv6TunnelSource(o.srv6.SID); err != nil {
			return err
		}
		log.Info("srv6 path mode", "sid", o.srv6.SID, "locators", o.srv6.Locators)
	}
	adoptFailed := newSRv6AdoptFailed()
	reg.MustRegister(adoptFailed)
	var returns *dataplane.SRv6Returns
	if o.srv6.SID.IsValid() {
		returns = newSRv6Returns(o.pinPath, log, adoptFailed)
	} else {
		returns = dataplane.NewSRv6Returns(srv6TableBase, srv6Tables)
	}
	node := newSRv6Node(dp, returns, log, adoptFailed)
	api, err := agentapi.NewServer(node, agentapi.ServerConfig{TLS: src, Registerer: reg, Logger: log})
	if err != nil {
		return err
	}

	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	metricsMux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := dp.List(); err != nil {
			http.Error(w, "data plane: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})

	// Bodies are bounded by the agent API (64 KiB); every server has read,
	// write and idle timeouts.
	servers := []*http.Server{
		{Addr: o.metricsAddr, Handler: metricsMux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10},
		{Addr: o.apiAddr, Handler: api.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10},
	}
	if src != nil {
		servers[1].TLSConfig = src.ServerConfig()
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", srv.Addr, err)
		}
		if srv.TLSConfig != nil {
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
		log.Info("serving", "addr", ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", srv.Addr, err)
			}
		}()
	}
	log.Info("roam-agent ready", "pin_path", o.pinPath, "iface", o.ifaces, "tc_iface", o.tcIfaces)

	select {
	case <-ctx.Done():
		log.Info("stopping: pins and links stay in place, traffic keeps flowing")
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(sctx)
	}
	return err
}

// warnForwarding says when IPv4 forwarding is off on ifname: bpf_fib_lookup
// then refuses to forward and redirected packets are dropped as no_route.
func warnForwarding(ifname string, log *slog.Logger) {
	b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4/conf", ifname, "forwarding"))
	if err == nil && strings.TrimSpace(string(b)) == "0" {
		log.Warn("IPv4 forwarding is off: redirected packets will be dropped (no_route); enable it with sysctl -w net.ipv4.ip_forward=1",
			"iface", ifname)
	}
}
