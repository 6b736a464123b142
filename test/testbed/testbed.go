package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/test/netns"
)

// Node-side interface names inside a cluster namespace, and the client's.
const (
	NodeWANIf  = "wan0" // node's end of the WAN link
	ClientIf   = "eth0" // client's end of its access link
	routerIfPf = "r-"   // router's end of cluster X's link: r-X
	accessIfPf = "acc"  // node's end of client j's access link: acc<j>
)

// Cluster is one built cluster as seen from outside.
type Cluster struct {
	Name  string `json:"name"`
	Tier  string `json:"tier"`
	Index int    `json:"index"` // 1-based, the address plan's i
	NS    string `json:"netns"` // the node's namespace
	// Ifaces are the node's interfaces (WAN first, then access links):
	// where the agent attaches XDP.
	Ifaces   []string   `json:"ifaces"`
	WAN4     netip.Addr `json:"wan4"`
	WAN6     netip.Addr `json:"wan6"`
	Router4  netip.Addr `json:"router4"`
	RouterIf string     `json:"router_if"` // router's end of this cluster's link
}

// Client is one client namespace behind a cluster's node.
type Client struct {
	Name    string     `json:"name"`
	Cluster string     `json:"cluster"`
	Index   int        `json:"index"` // 1-based, the address plan's j
	NS      string     `json:"netns"`
	Addr4   netip.Addr `json:"addr4"`
	Addr6   netip.Addr `json:"addr6"`
	NodeIf  string     `json:"node_if"` // the node's end of the access link
	Gateway netip.Addr `json:"gateway"`
}

// Event is one change the testbed made to the network after Up.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // shape, unshape, cut, restore
	Cluster string    `json:"cluster"`
	Detail  string    `json:"detail"`
}

func (e Event) String() string {
	return fmt.Sprintf("%s %s %s: %s", e.Time.Format("15:04:05.000"), e.Kind, e.Cluster, e.Detail)
}

// Proc is a process the testbed started.
type Proc struct {
	Name   string   `json:"name"`
	NS     string   `json:"netns"`
	PID    int      `json:"pid"`
	Binary string   `json:"binary"`
	Args   []string `json:"args"`
	Log    string   `json:"log"`
	Health string   `json:"health,omitempty"` // URL polled for readiness, inside NS
}

// State is what the state file records: enough to tear everything down
// from another process, or after a crash.
type State struct {
	Name       string            `json:"name"`
	Config     Config            `json:"config"`
	Router     string            `json:"router_netns"`
	Namespaces []string          `json:"namespaces"`
	Clusters   []Cluster         `json:"clusters"`
	Clients    []Client          `json:"clients"`
	Procs      []Proc            `json:"procs"`
	PinPaths   []string          `json:"pin_paths"`
	WorkDir    string            `json:"work_dir,omitempty"`
	Rates      map[string]uint64 `json:"rates,omitempty"` // cluster -> bits/s
	Cut        map[string]bool   `json:"cut,omitempty"`
	Events     []Event           `json:"events,omitempty"`
	Secrets    Secrets           `json:"secrets"`
	Mode       string            `json:"mode,omitempty"` // redirect mode of the launch (LaunchConfig.Mode)
	Created    time.Time         `json:"created"`
}

// Testbed is a built topology.
type Testbed struct {
	mu        sync.Mutex
	st        State
	statePath string
	log       *slog.Logger
	procs     map[int]*runningProc
}

func stateDir(c Config) string {
	if c.StateDir != "" {
		return c.StateDir
	}
	return "/run/roam"
}

// StatePath is where the testbed named in c records its state.
func StatePath(c Config) string {
	return filepath.Join(stateDir(c), "testbed-"+c.Name+".json")
}

// Prefix is the namespace name prefix of the testbed named name.
func Prefix(name string) string { return "roam-" + name + "-" }

// CheckEnv reports, with a hint, why this machine cannot run the testbed.
func CheckEnv() error {
	if os.Geteuid() != 0 {
		return errors.New("the testbed needs root (network namespaces, XDP, bpffs): run it with sudo")
	}
	if _, err := os.Stat("/sys/fs/bpf"); err != nil {
		return errors.New("bpffs is not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf")
	}
	return nil
}

// Up builds the topology described by cfg. Leftovers of an earlier testbed
// of the same name (a killed run) are removed first. On error everything
// built so far is removed.
func Up(ctx context.Context, cfg Config, log *slog.Logger) (*Testbed, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CheckEnv(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := Cleanup(ctx, cfg, log); err != nil {
		return nil, fmt.Errorf("clean leftovers of testbed %s: %w", cfg.Name, err)
	}
	if err := os.MkdirAll(stateDir(cfg), 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	tb := &Testbed{
		st: State{
			Name: cfg.Name, Config: cfg, Router: Prefix(cfg.Name) + "wan",
			Rates: map[string]uint64{}, Cut: map[string]bool{}, Created: time.Now(),
		},
		statePath: StatePath(cfg),
		log:       log,
		procs:     map[int]*runningProc{},
	}
	if err := tb.build(ctx); err != nil {
		derr := tb.Down(context.WithoutCancel(ctx))
		return nil, errors.Join(fmt.Errorf("build testbed %s: %w", cfg.Name, err), derr)
	}
	return tb, nil
}

// Load opens the state of a testbed that is up (possibly built by another
// process) so it can be inspected, shaped, cut or brought down.
func Load(cfg Config) (*Testbed, error) {
	b, err := os.ReadFile(StatePath(cfg))
	if err != nil {
		return nil, fmt.Errorf("read testbed state: %w (is testbed %s up?)", err, cfg.Name)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse testbed state %s: %w", StatePath(cfg), err)
	}
	if st.Rates == nil {
		st.Rates = map[string]uint64{}
	}
	if st.Cut == nil {
		st.Cut = map[string]bool{}
	}
	return &Testbed{st: st, statePath: StatePath(cfg), log: slog.New(slog.DiscardHandler), procs: map[int]*runningProc{}}, nil
}

// save writes the state file atomically. Callers hold tb.mu.
func (tb *Testbed) save() error {
	b, err := json.MarshalIndent(tb.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode testbed state: %w", err)
	}
	tmp := tb.statePath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write testbed state: %w", err)
	}
	if err := os.Rename(tmp, tb.statePath); err != nil {
		return fmt.Errorf("write testbed state: %w", err)
	}
	return nil
}

// State returns a copy of the recorded state.
func (tb *Testbed) State() State {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	b, _ := json.Marshal(tb.st)
	var c State
	_ = json.Unmarshal(b, &c)
	return c
}

// Name is the testbed's name.
func (tb *Testbed) Name() string { return tb.st.Name }

// RouterNS is the WAN router's namespace (where roam-meta runs).
func (tb *Testbed) RouterNS() string { return tb.st.Router }

// Clusters lists the clusters in config order.
func (tb *Testbed) Clusters() []Cluster {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]Cluster(nil), tb.st.Clusters...)
}

// Cluster returns one cluster by name.
func (tb *Testbed) Cluster(name string) (Cluster, error) {
	return findNamed(tb, &tb.st.Clusters, "cluster", name)
}

// Client returns one client by name.
func (tb *Testbed) Client(name string) (Client, error) {
	return findNamed(tb, &tb.st.Clients, "client", name)
}

func (c Cluster) name() string { return c.Name }
func (c Client) name() string  { return c.Name }

// findNamed returns the entry of *list called name, reading the list
// under tb.mu; kind names what it is in the error.
func findNamed[T interface{ name() string }](tb *Testbed, list *[]T, kind, name string) (T, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, x := range *list {
		if x.name() == name {
			return x, nil
		}
	}
	var none T
	return none, fmt.Errorf("testbed %s: no %s %q", tb.st.Name, kind, name)
}

// Events lists the shape/cut changes made so far.
func (tb *Testbed) Events() []Event {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return append([]Event(nil), tb.st.Events...)
}

func (tb *Testbed) addNS(name string) error {
	tb.mu.Lock()
	tb.st.Namespaces = append(tb.st.Namespaces, name)
	err := tb.save()
	tb.mu.Unlock()
	if err != nil {
		return err
	}
	if err := netns.Create(name); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv6.conf.all.keep_addr_on_down", "1"},
		{"net.ipv6.conf.default.keep_addr_on_down", "1"},
	} {
		if err := netns.Sysctl(name, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

func prefixOf(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, a.BitLen())},
		Flags: unix.IFA_F_NODAD,
	}
}

func netOf(a netip.Addr, bits int) *net.IPNet {
	p := netip.PrefixFrom(a, bits).Masked()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(bits, a.BitLen())}
}

// pair4and6 gives the two addresses of a veth end: an IPv4 /24 and an IPv6 /64.
func pair4and6(a4, a6 netip.Addr) []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(a4, 24), netip.PrefixFrom(a6, 64)}
}

func addDefaultRoutes(ns, ifname string, gw4, gw6 netip.Addr) error {
	return netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", ifname, ns, err)
		}
		for _, gw := range []netip.Addr{gw4, gw6} {
			dst := netOf(gw, 0)
			if err := h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.IP(gw.AsSlice())}); err != nil {
				return fmt.Errorf("add default route via %s in %s: %w", gw, ns, err)
			}
		}
		return nil
	})
}

// build creates namespaces, links, addresses and routes. It records each
// namespace in the state file before creating it.
func (tb *Testbed) build(ctx context.Context) error {
	cfg := tb.st.Config
	pf := Prefix(cfg.Name)
	if err := tb.addNS(tb.st.Router); err != nil {
		return err
	}
	j := 0
	for i0, cc := range cfg.Clusters {
		if err := ctx.Err(); err != nil {
			return err
		}
		i := i0 + 1
		c := Cluster{
			Name: cc.Name, Tier: cc.Tier, Index: i, NS: pf + cc.Name,
			Ifaces: []string{NodeWANIf}, WAN4: WANNode4(i), WAN6: WANNode6(i),
			Router4: WANRouter4(i), RouterIf: routerIfPf + cc.Name,
		}
		if err := tb.addNS(c.NS); err != nil {
			return err
		}
		if err := netns.Veth(netns.End{NS: tb.st.Router, Name: c.RouterIf, Addrs: pair4and6(WANRouter4(i), WANRouter6(i))},
			netns.End{NS: c.NS, Name: NodeWANIf, Addrs: pair4and6(WANNode4(i), WANNode6(i))}); err != nil {
			return err
		}
		if err := addDefaultRoutes(c.NS, NodeWANIf, WANRouter4(i), WANRouter6(i)); err != nil {
			return err
		}
		if err := netns.AttachXDPPass(tb.st.Router, c.RouterIf); err != nil {
			return err
		}
		for _, cn := range cc.Clients {
			j++
			cl := Client{
				Name: cn, Cluster: cc.Name, Index: j, NS: pf + cn,
				Addr4: AccessClient4(j), Addr6: AccessClient6(j),
				NodeIf: fmt.Sprintf("%s%d", accessIfPf, j), Gateway: AccessNode4(j),
			}
			if err := tb.addNS(cl.NS); err != nil {
				return err
			}
			if err := netns.Veth(netns.End{NS: c.NS, Name: cl.NodeIf, Addrs: pair4and6(AccessNode4(j), AccessNode6(j))},
				netns.End{NS: cl.NS, Name: ClientIf, Addrs: pair4and6(AccessClient4(j), AccessClient6(j))}); err != nil {
				return err
			}
			if err := addDefaultRoutes(cl.NS, ClientIf, AccessNode4(j), AccessNode6(j)); err != nil {
				return err
			}
			if err := netns.AttachXDPPass(cl.NS, ClientIf); err != nil {
				return err
			}
			c.Ifaces = append(c.Ifaces, cl.NodeIf)
			tb.mu.Lock()
			tb.st.Clients = append(tb.st.Clients, cl)
			tb.mu.Unlock()
		}
		tb.mu.Lock()
		tb.st.Clusters = append(tb.st.Clusters, c)
		tb.mu.Unlock()
	}
	if err := tb.routerRoutes(""); err != nil {
		return err
	}
	for _, cc := range cfg.Clusters {
		if cc.Rate != "" {
			bps, _ := ParseRate(cc.Rate)
			if _, err := tb.Shape(cc.Name, bps); err != nil {
				return err
			}
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.log.Info("testbed up", "name", cfg.Name, "clusters", len(tb.st.Clusters), "clients", len(tb.st.Clients))
	return tb.save()
}

// routerRoutes installs the router's routes to the clients' access
// subnets (via the node of the cluster they sit behind); only those behind
// cluster only when it is set. Link-down removes them, so Restore calls it.
func (tb *Testbed) routerRoutes(only string) error {
	tb.mu.Lock()
	clients := append([]Client(nil), tb.st.Clients...)
	clusters := append([]Cluster(nil), tb.st.Clusters...)
	tb.mu.Unlock()
	return netns.Handle(tb.st.Router, func(h *netlink.Handle) error {
		for _, cl := range clients {
			if only != "" && cl.Cluster != only {
				continue
			}
			var c Cluster
			for _, x := range clusters {
				if x.Name == cl.Cluster {
					c = x
				}
			}
			l, err := h.LinkByName(c.RouterIf)
			if err != nil {
				return fmt.Errorf("find %s in router: %w", c.RouterIf, err)
			}
			for _, r := range []struct {
				dst *net.IPNet
				gw  netip.Addr
			}{{netOf(AccessClient4(cl.Index), 24), c.WAN4}, {netOf(AccessClient6(cl.Index), 64), c.WAN6}} {
				if err := h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: r.dst, Gw: net.IP(r.gw.AsSlice())}); err != nil {
					return fmt.Errorf("add route %s via %s in router: %w", r.dst, r.gw, err)
				}
			}
		}
		return nil
	})
}

func (tb *Testbed) event(kind, cluster, detail string) Event {
	e := Event{Time: time.Now(), Kind: kind, Cluster: cluster, Detail: detail}
	tb.st.Events = append(tb.st.Events, e)
	tb.log.Info("testbed "+kind, "cluster", cluster, "detail", detail)
	return e
}

// Shape limits cluster's WAN link to bps bits per second in both
// directions with a tbf qdisc on each end (router side: towards the
// cluster; node side: towards the router). Frames an XDP program redirects
// straight into the node's end skip its qdisc; the router's end still
// shapes them on the way back.
func (tb *Testbed) Shape(cluster string, bps uint64) (Event, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return Event{}, err
	}
	if bps < 8000 {
		return Event{}, fmt.Errorf("shape %s: rate %d bit/s too low", cluster, bps)
	}
	rate := bps / 8 // bytes/s
	burst := uint32(max(rate/100, 16*1514))
	limit := uint32(rate/20) + burst // ~50 ms of queue
	for _, end := range [][2]string{{tb.st.Router, c.RouterIf}, {c.NS, NodeWANIf}} {
		if err := netns.Handle(end[0], func(h *netlink.Handle) error {
			l, err := h.LinkByName(end[1])
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", end[1], end[0], err)
			}
			q := &netlink.Tbf{
				QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
				Rate:       rate, Limit: limit, Buffer: netlink.Xmittime(rate, burst),
			}
			if err := h.QdiscReplace(q); err != nil {
				return fmt.Errorf("set tbf %s on %s in %s: %w", FormatRate(bps), end[1], end[0], err)
			}
			return nil
		}); err != nil {
			return Event{}, err
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.st.Rates[cluster] = bps
	e := tb.event("shape", cluster, fmt.Sprintf("tbf rate %s on %s (router) and %s (%s)", FormatRate(bps), c.RouterIf, NodeWANIf, c.NS))
	return e, tb.save()
}

// Unshape removes the rate limit of cluster's WAN link.
func (tb *Testbed) Unshape(cluster string) (Event, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return Event{}, err
	}
	for _, end := range [][2]string{{tb.st.Router, c.RouterIf}, {c.NS, NodeWANIf}} {
		if err := netns.Handle(end[0], func(h *netlink.Handle) error {
			l, err := h.LinkByName(end[1])
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", end[1], end[0], err)
			}
			qs, err := h.QdiscList(l)
			if err != nil {
				return fmt.Errorf("list qdiscs of %s in %s: %w", end[1], end[0], err)
			}
			for _, q := range qs {
				if q.Type() == "tbf" && q.Attrs().Parent == netlink.HANDLE_ROOT {
					if err := h.QdiscDel(q); err != nil {
						return fmt.Errorf("remove tbf from %s in %s: %w", end[1], end[0], err)
					}
				}
			}
			return nil
		}); err != nil {
			return Event{}, err
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	delete(tb.st.Rates, cluster)
	e := tb.event("unshape", cluster, "rate limit removed from "+c.RouterIf+" and "+NodeWANIf)
	return e, tb.save()
}

// Cut takes cluster's WAN link down at the router: the cluster can reach
// nothing beyond its node (the MO, other clusters) and nothing reaches it.
func (tb *Testbed) Cut(cluster string) (Event, error) {
	return tb.setLink(cluster, false)
}

// Restore brings cluster's WAN link back up and reinstalls the router's
// routes over it.
func (tb *Testbed) Restore(cluster string) (Event, error) {
	return tb.setLink(cluster, true)
}

// setLink sets cluster's WAN link at the router up (and reinstalls the
// router's routes over it) or down, and records it in the state file.
func (tb *Testbed) setLink(cluster string, up bool) (Event, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return Event{}, err
	}
	if err := tb.routerLink(c, up); err != nil {
		return Event{}, err
	}
	if up {
		if err := tb.routerRoutes(cluster); err != nil {
			return Event{}, err
		}
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if up {
		delete(tb.st.Cut, cluster)
		return tb.event("restore", cluster, "link "+c.RouterIf+" up at the router, routes reinstalled"), tb.save()
	}
	tb.st.Cut[cluster] = true
	return tb.event("cut", cluster, "link "+c.RouterIf+" down at the router"), tb.save()
}

// routerLink sets cluster c's WAN link at the router down, or up with the
// router's addresses on it again.
func (tb *Testbed) routerLink(c Cluster, up bool) error {
	return netns.Handle(tb.st.Router, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.RouterIf)
		if err != nil {
			return fmt.Errorf("find %s in router: %w", c.RouterIf, err)
		}
		if !up {
			if err := h.LinkSetDown(l); err != nil {
				return fmt.Errorf("set %s down: %w", c.RouterIf, err)
			}
			return nil
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", c.RouterIf, err)
		}
		for _, a := range []*netlink.Addr{prefixOf(WANRouter4(c.Index), 24), prefixOf(WANRouter6(c.Index), 64)} {
			if err := h.AddrReplace(l, a); err != nil {
				return fmt.Errorf("re-add %s to %s: %w", a.IPNet, c.RouterIf, err)
			}
		}
		return nil
	})
}

// LinkStatus is one WAN link as Status reports it.
type LinkStatus struct {
	Cluster string `json:"cluster"`
	Iface   string `json:"iface"`
	Up      bool   `json:"up"`
	Qdisc   string `json:"qdisc"`
	Rate    string `json:"rate,omitempty"`
}

// ProcStatus is one process as Status reports it.
type ProcStatus struct {
	Proc
	Alive bool `json:"alive"`
}

// Status is what is there now.
type Status struct {
	Name       string            `json:"name"`
	StateFile  string            `json:"state_file"`
	Namespaces map[string]bool   `json:"namespaces"` // name -> exists
	Links      []LinkStatus      `json:"links"`
	Procs      []ProcStatus      `json:"procs"`
	Clusters   []Cluster         `json:"clusters"`
	Clients    []Client          `json:"clients"`
	Events     []Event           `json:"events,omitempty"`
	Extra      map[string]string `json:"extra,omitempty"`
}

// Status inspects the namespaces, links and processes the state names.
func (tb *Testbed) Status() Status {
	st := tb.State()
	s := Status{Name: st.Name, StateFile: tb.statePath, Namespaces: map[string]bool{}, Clusters: st.Clusters, Clients: st.Clients, Events: st.Events}
	for _, n := range st.Namespaces {
		s.Namespaces[n] = netns.Exists(n)
	}
	for _, c := range st.Clusters {
		ls := LinkStatus{Cluster: c.Name, Iface: c.RouterIf}
		_ = netns.Handle(st.Router, func(h *netlink.Handle) error {
			l, err := h.LinkByName(c.RouterIf)
			if err != nil {
				return err
			}
			ls.Up = l.Attrs().Flags&net.FlagUp != 0
			qs, err := h.QdiscList(l)
			if err != nil {
				return err
			}
			for _, q := range qs {
				if q.Attrs().Parent == netlink.HANDLE_ROOT {
					ls.Qdisc = q.Type()
					if t, ok := q.(*netlink.Tbf); ok {
						ls.Rate = FormatRate(t.Rate * 8)
					}
				}
			}
			return nil
		})
		s.Links = append(s.Links, ls)
	}
	for _, p := range st.Procs {
		s.Procs = append(s.Procs, ProcStatus{Proc: p, Alive: procAlive(p)})
	}
	return s
}

// Down stops every process and removes every namespace (with its links),
// pin path and the state file.
func (tb *Testbed) Down(ctx context.Context) error {
	tb.mu.Lock()
	st := tb.st
	running := tb.procs
	tb.procs = map[int]*runningProc{}
	tb.mu.Unlock()
	err := teardown(ctx, st, running, tb.statePath, tb.log)
	return err
}

// Cleanup removes whatever a testbed named cfg.Name left behind: the
// processes, namespaces and pins its state file names, and any namespace
// with its prefix. It is what a second Up runs after a killed first one.
func Cleanup(ctx context.Context, cfg Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var st State
	b, err := os.ReadFile(StatePath(cfg))
	switch {
	case err == nil:
		if jerr := json.Unmarshal(b, &st); jerr != nil {
			log.Warn("unreadable testbed state; removing by prefix", "file", StatePath(cfg), "err", jerr)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("read testbed state: %w", err)
	}
	st.Name = cfg.Name
	return teardown(ctx, st, nil, StatePath(cfg), log)
}

func teardown(ctx context.Context, st State, running map[int]*runningProc, statePath string, log *slog.Logger) error {
	var errs []error
	// Processes first (newest first), so nothing holds a namespace.
	for i := len(st.Procs) - 1; i >= 0; i-- {
		if err := stopProc(ctx, st.Procs[i], running[st.Procs[i].PID]); err != nil {
			errs = append(errs, err)
		} else {
			log.Info("stopped", "proc", st.Procs[i].Name, "pid", st.Procs[i].PID)
		}
	}
	nss := map[string]bool{}
	for _, n := range st.Namespaces {
		nss[n] = true
	}
	if st.Name != "" {
		for _, n := range netns.List(Prefix(st.Name)) {
			nss[n] = true
		}
	}
	names := make([]string, 0, len(nss))
	for n := range nss {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !netns.Exists(n) {
			continue
		}
		killNSProcs(n, log)
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
		} else {
			log.Info("deleted netns", "netns", n)
		}
	}
	for _, p := range st.PinPaths {
		if !strings.HasPrefix(p, "/sys/fs/bpf/") && !strings.Contains(p, "roam") {
			errs = append(errs, fmt.Errorf("refuse to remove pin path %q", p))
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove pins %s: %w", p, err))
		}
	}
	if st.WorkDir != "" && strings.Contains(st.WorkDir, "roam-testbed") {
		_ = os.RemoveAll(st.WorkDir)
	}
	if len(errs) == 0 {
		if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove state file: %w", err))
		}
	}
	return errors.Join(errs...)
}

// CheckHost reports, with a hint, why this machine cannot run roam on the
// testbed: CheckEnv, then CheckXDP.
func CheckHost() error {
	if err := CheckEnv(); err != nil {
		return err
	}
	return CheckXDP()
}

// CheckXDP reports, with a hint, why this kernel cannot run XDP programs.
func CheckXDP() error {
	if err := features.HaveProgramType(ebpf.XDP); err != nil {
		return fmt.Errorf("this kernel cannot load XDP programs (%w): roam needs Linux >= 5.10 with CONFIG_BPF_SYSCALL and XDP", err)
	}
	return nil
}
