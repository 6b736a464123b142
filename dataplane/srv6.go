package dataplane

// SRv6 path mode (bpf/srv6.h): the node's SID and roam's locators, the
// copies of SRv6-redirected frontends that run on this node (serving,
// draining, gone) and the per-path counters.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/dataplane/lb"
)

// Generated from bpf/srv6.h.
type (
	// SRv6ConfigValue is the value of roam_srv6_config.
	SRv6ConfigValue = roamSrv6Config
	// LPM6Key is the key of roam_srv6_locators.
	LPM6Key = roamLpm6Key
	// SRv6LocalValue is the value of roam_srv6_local.
	SRv6LocalValue = roamSrv6Local
)

// Sizes of the encapsulation (bpf/srv6.h SRV6_OVERHEAD): outer IPv6, SRH, 16 bytes a segment.
const (
	srv6Overhead1   = 40 + 8 + 16
	srv6OverheadMax = 40 + 8 + 16*lb.MaxSegments
	srv6StatMax     = 5
)

// DefaultSRv6MTU is the underlay MTU assumed when SRv6Config.MTU is zero.
const DefaultSRv6MTU = 1500

// SRv6Config is a node's SRv6 setup.
type SRv6Config struct {
	// SID is this node's SID (lb.NodeSID of its cluster's locator): the
	// outer source of what it encapsulates and the SID it answers. Unset:
	// SRv6 is off here (SRv6 targets cannot be staged, packets to SIDs
	// pass untouched).
	SID netip.Addr
	// Locators are roam's locators, every cluster's: a segment list may
	// name only SIDs inside them, and a SID accepts packets only from
	// inside them. The node's own SID must be inside one.
	Locators []netip.Prefix
	// MTU is the underlay's MTU between locations (default 1500): TCP
	// SYNs encapsulated get their MSS clamped so that a full segment with
	// the largest encapsulation fits.
	MTU int
	// PreviousHold bounds how long after a move back home (a commit from
	// an SRv6 path to local) the open connections of that path stay on it
	// (bpf/srv6.h srv6_previous); default DefaultSRv6PreviousHold. It must
	// outlast the old copy's drain; after it, a TCP packet with no flow
	// and no socket here is the local copy's (a pod's connection whose
	// conntrack entry went). A later commit ends it.
	PreviousHold time.Duration
}

// DefaultSRv6PreviousHold is PreviousHold's default: three times the
// controller's default drain budget (10 s; the old location's copy is gone
// within it). Raise it with the controller's --drain-timeout (roam-agent
// --srv6-previous-hold).
const DefaultSRv6PreviousHold = 30 * time.Second

// Validate reports why c cannot be applied.
func (c SRv6Config) Validate() error {
	if !c.SID.IsValid() {
		if len(c.Locators) > 0 {
			return errors.New("srv6: locators given without the node's SID")
		}
		return nil
	}
	if !c.SID.Is6() || c.SID.Is4In6() {
		return fmt.Errorf("srv6: SID %s is not IPv6", c.SID)
	}
	for _, p := range c.Locators {
		if err := lb.ValidateLocator(p); err != nil {
			return fmt.Errorf("srv6: %w", err)
		}
	}
	if !inLocators(c.Locators, c.SID) {
		return fmt.Errorf("srv6: SID %s is inside none of the locators %v", c.SID, c.Locators)
	}
	if c.PreviousHold < 0 {
		return fmt.Errorf("srv6: negative previous-path hold %s", c.PreviousHold)
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("srv6: MTU %d outside 1280-65535", c.MTU)
	}
	return nil
}

// MSS returns the MSS clamp of an inner family (4 or 6) for the config's MTU.
func (c SRv6Config) MSS(family int) uint16 {
	mtu := c.MTU
	if mtu == 0 {
		mtu = DefaultSRv6MTU
	}
	inner := 20
	if family == 6 {
		inner = 40
	}
	return uint16(mtu - srv6OverheadMax - inner - 20)
}

func inLocators(ls []netip.Prefix, a netip.Addr) bool {
	for _, p := range ls {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (d *Dataplane) writeSRv6Config() error {
	c := d.cfg.SRv6
	if err := c.Validate(); err != nil {
		return fmt.Errorf("open dataplane: %w", err)
	}
	var v SRv6ConfigValue
	if c.SID.IsValid() {
		v.Sid = c.SID.As16()
		v.HasSid = 1
		v.Mss4, v.Mss6 = c.MSS(4), c.MSS(6)
	}
	if err := d.maps.RoamSrv6Config.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write srv6 config: %w", err)
	}
	return d.writeLocators(c.Locators)
}

// SetLocators replaces roam's locators (every cluster's, as the hellos
// announce them). The node's own SID must stay inside one.
func (d *Dataplane) SetLocators(ls []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.cfg.SRv6
	c.Locators = slices.Clone(ls)
	if err := c.Validate(); err != nil {
		return fmt.Errorf("set locators: %w", err)
	}
	if err := d.writeLocators(c.Locators); err != nil {
		return err
	}
	d.cfg.SRv6 = c
	return nil
}

func lpmKey(p netip.Prefix) LPM6Key {
	return LPM6Key{Prefixlen: uint32(p.Bits()), Addr: p.Masked().Addr().As16()}
}

// writeLocators makes roam_srv6_locators hold exactly ls (new ones first, so
// a locator kept is never missing meanwhile).
func (d *Dataplane) writeLocators(ls []netip.Prefix) error {
	want := make(map[LPM6Key]bool, len(ls))
	for _, p := range ls {
		k := lpmKey(p)
		want[k] = true
		if err := d.maps.RoamSrv6Locators.Update(&k, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write locator %s: %w", p, err)
		}
	}
	var (
		k    LPM6Key
		v    uint32
		dead []LPM6Key
	)
	it := d.maps.RoamSrv6Locators.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk locators: %w", err)
	}
	for i := range dead {
		if err := d.maps.RoamSrv6Locators.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete locator: %w", err)
		}
	}
	return nil
}

// checkSRv6Target refuses an SRv6 target this node cannot send: SRv6 off
// here, or a SID outside roam's locators.
func (d *Dataplane) checkSRv6Target(t lb.Target) error {
	if t.Kind != lb.TargetSRv6 {
		return nil
	}
	d.mu.Lock()
	c := d.cfg.SRv6
	d.mu.Unlock()
	if !c.SID.IsValid() {
		return fmt.Errorf("target %s: SRv6 is off on this node (no SID configured)", t)
	}
	for _, s := range t.Segments() {
		if !inLocators(c.Locators, s) {
			return fmt.Errorf("target %s: SID %s is outside roam's locators %v", t, s, c.Locators)
		}
	}
	return nil
}

// srv6Hold keeps frontend id's previous SRv6 path for the open
// connections along it until PreviousHold from now (roam_srv6_prev): a
// commit from an SRv6 path to local writes it before its switch.
func (d *Dataplane) srv6Hold(id uint32) error {
	now, err := monotonicNow()
	if err != nil {
		return fmt.Errorf("write previous srv6 path's hold: %w", err)
	}
	hold := d.cfg.SRv6.PreviousHold
	if hold == 0 {
		hold = DefaultSRv6PreviousHold
	}
	if err := d.maps.RoamSrv6Prev.Put(id, now+uint64(hold)); err != nil {
		return fmt.Errorf("write previous srv6 path's hold: %w", err)
	}
	return nil
}

// srv6EndHold ends frontend id's previous-path hold: every other commit
// writes it after its switch.
func (d *Dataplane) srv6EndHold(id uint32) error {
	if err := d.maps.RoamSrv6Prev.Put(id, uint64(0)); err != nil {
		return fmt.Errorf("end previous srv6 path's hold: %w", err)
	}
	return nil
}

// SRv6State is what this node does with SRv6 packets for a frontend's copy
// here (bpf/srv6.h enum srv6_state).
type SRv6State uint32

// States of a local copy.
const (
	SRv6Gone     SRv6State = 0 // no copy here: forward to the next segment
	SRv6Serving  SRv6State = 1 // deliver every packet to it
	SRv6Draining SRv6State = 2 // deliver the flows it has, send new ones on
)

var srv6StateNames = [...]string{SRv6Gone: "gone", SRv6Serving: "serving", SRv6Draining: "draining"}

func (s SRv6State) String() string { return enumName(srv6StateNames[:], s, "srv6state") }

// SetSRv6Copy says what the copy of f on this node does: serving, draining,
// or gone (removes it and the flows it delivered). f is the frontend as the
// home announces it: the inner destination of the packets.
func (d *Dataplane) SetSRv6Copy(f lb.Frontend, s SRv6State) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("set srv6 copy: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	key := frontendKey(f)
	var cur SRv6LocalValue
	err := d.maps.RoamSrv6Local.Lookup(&key, &cur)
	exists := err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("set srv6 copy %s: %w", f, err)
	}
	switch s {
	case SRv6Gone:
		if !exists {
			return nil
		}
		if err := d.maps.RoamSrv6Local.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set srv6 copy %s gone: %w", f, err)
		}
		return d.forgetSRv6Flows(key)
	case SRv6Serving, SRv6Draining:
	default:
		return fmt.Errorf("set srv6 copy %s: bad state %d", f, s)
	}
	if !exists {
		id, err := d.freeSRv6ID()
		if err != nil {
			return fmt.Errorf("set srv6 copy %s: %w", f, err)
		}
		zero := make([]Counter, ebpf.MustPossibleCPU())
		// Only the copy's own counters: ids of copies and of frontends
		// share the index space (a frontend's are encap, decap, mss).
		for _, st := range []uint32{srv6StatDeliver, srv6StatForward} {
			if err := d.maps.RoamSrv6Stats.Put(id*srv6StatMax+st, zero); err != nil {
				return fmt.Errorf("set srv6 copy %s: reset counters: %w", f, err)
			}
		}
		cur.Id = id
	}
	cur.State = uint32(s)
	if err := d.maps.RoamSrv6Local.Update(&key, &cur, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set srv6 copy %s: %w", f, err)
	}
	return nil
}

// forgetSRv6Flows deletes the delivered flows to frontend key.
func (d *Dataplane) forgetSRv6Flows(key FrontendKey) error {
	var dead []CTKey
	var seen uint64
	var k CTKey
	it := d.maps.RoamSrv6Flows.Iterate()
	for it.Next(&k, &seen) {
		if k.Daddr == key.Addr && k.Dport == key.Port && k.Proto == key.Proto {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk srv6 flows: %w", err)
	}
	for i := range dead {
		if err := d.maps.RoamSrv6Flows.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete srv6 flow: %w", err)
		}
	}
	return nil
}

func (d *Dataplane) freeSRv6ID() (uint32, error) {
	return lowestFree(d.maps.RoamSrv6Local, func(_ FrontendKey, v SRv6LocalValue) uint32 { return v.Id }, "srv6 copy")
}

// SRv6Copies returns the copies on this node and their states.
func (d *Dataplane) SRv6Copies() (map[lb.Frontend]SRv6State, error) {
	out := map[lb.Frontend]SRv6State{}
	err := iterateMap(d.maps.RoamSrv6Local, func(k FrontendKey, v SRv6LocalValue) { out[k.Frontend()] = SRv6State(v.State) })
	if err != nil {
		return nil, fmt.Errorf("list srv6 copies: %w", err)
	}
	return out, nil
}

// SRv6Stats are a frontend's SRv6 counters on this node, summed over CPUs.
type SRv6Stats struct {
	Encap   Counter `json:"encap"`   // home: encapsulated
	Decap   Counter `json:"decap"`   // home: replies decapsulated to the client
	Deliver Counter `json:"deliver"` // a location: delivered to the copy here
	Forward Counter `json:"forward"` // a location: sent on to the next segment
}

// SRv6 counter indexes (bpf/srv6.h enum srv6_stat).
const (
	srv6StatEncap   = 0
	srv6StatDeliver = 1
	srv6StatForward = 2
	srv6StatDecap   = 3
	srv6StatMSS     = 4
)

func (d *Dataplane) srv6Counter(id, stat uint32) (Counter, error) {
	var per []Counter
	if err := d.maps.RoamSrv6Stats.Lookup(id*srv6StatMax+stat, &per); err != nil {
		return Counter{}, fmt.Errorf("read srv6 counter: %w", err)
	}
	var c Counter
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c, nil
}

// SRv6Stats reads f's counters: the home's (encap, decap) if f is a
// frontend here, the location's (deliver, forward) if f has a copy here.
func (d *Dataplane) SRv6Stats(f lb.Frontend) (SRv6Stats, error) {
	var s SRv6Stats
	key := frontendKey(f)
	var id uint32
	var err error
	if d.maps.RoamServices.Lookup(&key, &id) == nil {
		if s.Encap, err = d.srv6Counter(id, srv6StatEncap); err != nil {
			return s, err
		}
		if s.Decap, err = d.srv6Counter(id, srv6StatDecap); err != nil {
			return s, err
		}
	}
	var loc SRv6LocalValue
	if d.maps.RoamSrv6Local.Lookup(&key, &loc) == nil {
		if s.Deliver, err = d.srv6Counter(loc.Id, srv6StatDeliver); err != nil {
			return s, err
		}
		if s.Forward, err = d.srv6Counter(loc.Id, srv6StatForward); err != nil {
			return s, err
		}
	}
	return s, nil
}

// SRv6Unowned reads the counters of no frontend: packets forwarded on at
// this node's SID with no copy entry here, and SYNs whose MSS was clamped.
func (d *Dataplane) SRv6Unowned() (forward, mssClamped uint64, err error) {
	f, err := d.srv6Counter(0, srv6StatForward)
	if err != nil {
		return 0, 0, err
	}
	m, err := d.srv6Counter(0, srv6StatMSS)
	return f.Packets, m.Packets, err
}

// XDPRunStats returns the XDP program's run time and run count since it
// was loaded, as the kernel counts them while BPF statistics are enabled
// (ebpf.EnableStats, or kernel.bpf_stats_enabled): the cost per packet.
func (d *Dataplane) XDPRunStats() (runTime time.Duration, runs uint64, err error) {
	st, err := d.objs.RoamXdp.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("xdp program stats: %w", err)
	}
	return st.Runtime, st.RunCount, nil
}

// PinPath is the bpffs directory the data plane's maps are pinned in.
func (d *Dataplane) PinPath() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.PinPath
}

// SRv6Config returns the node's SRv6 setup (a copy).
func (d *Dataplane) SRv6Config() SRv6Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.cfg.SRv6
	c.Locators = slices.Clone(c.Locators)
	return c
}

// AcceptsSID reports whether a is inside one of roam's locators.
func (c SRv6Config) AcceptsSID(a netip.Addr) bool { return inLocators(c.Locators, a) }

// srv6Descs are the SRv6 path mode's metrics (see Collector).
type srv6Descs struct {
	packets, path, copy *prometheus.Desc
}

func newSRv6Descs() srv6Descs {
	return srv6Descs{
		packets: prometheus.NewDesc("roam_dataplane_srv6_packets_total",
			"SRv6 path mode packets of a frontend by step: encap (home: sent along its path), decap (home: a reply decapsulated to the client), "+
				"deliver (a location: delivered to the copy here), forward (a location: sent on to the next segment).",
			[]string{"frontend", "step"}, nil),
		path: prometheus.NewDesc("roam_dataplane_srv6_path",
			"1 for a home frontend's SRv6 segment list, by slot (active, staged): the path its encap packets take.",
			[]string{"frontend", "slot", "path"}, nil),
		copy: prometheus.NewDesc("roam_dataplane_srv6_copy",
			"1 for the state of a frontend's copy at this node as an SRv6 location (serving, draining).",
			[]string{"frontend", "state"}, nil),
	}
}

func (s srv6Descs) describe(ch chan<- *prometheus.Desc) {
	ch <- s.packets
	ch <- s.path
	ch <- s.copy
}

// read appends the SRv6 metrics of the home's SRv6 frontends (services)
// and of the copies at this node.
func (s srv6Descs) read(d *Dataplane, services []lb.Service, out []prometheus.Metric) ([]prometheus.Metric, error) {
	copies, err := d.SRv6Copies()
	if err != nil {
		return nil, err
	}
	seen := map[lb.Frontend]bool{}
	for _, svc := range services {
		if svc.Active.Kind != lb.TargetSRv6 && svc.Staged.Kind != lb.TargetSRv6 {
			continue
		}
		f := svc.Frontend.String()
		for _, sl := range []struct {
			name string
			t    lb.Target
		}{{"active", svc.Active}, {"staged", svc.Staged}} {
			if sl.t.Kind == lb.TargetSRv6 {
				out = append(out, prometheus.MustNewConstMetric(s.path, prometheus.GaugeValue, 1, f, sl.name, sl.t.String()))
			}
		}
		seen[svc.Frontend] = true
	}
	for fr, st := range copies {
		out = append(out, prometheus.MustNewConstMetric(s.copy, prometheus.GaugeValue, 1, fr.String(), st.String()))
		seen[fr] = true
	}
	for fr := range seen {
		st, err := d.SRv6Stats(fr)
		if err != nil {
			return nil, err
		}
		f := fr.String()
		for _, c := range []struct {
			step string
			n    Counter
		}{{"encap", st.Encap}, {"decap", st.Decap}, {"deliver", st.Deliver}, {"forward", st.Forward}} {
			out = append(out, prometheus.MustNewConstMetric(s.packets, prometheus.CounterValue, float64(c.n.Packets), f, c.step))
		}
	}
	return out, nil
}
