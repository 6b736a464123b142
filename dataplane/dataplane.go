// Package dataplane is the Go side of roam's eBPF load balancer: loading and
// attaching the programs in bpf/, pinning, typed access to the service and
// conntrack maps, the staged-then-swap commit, flow queries for draining and
// a Prometheus collector over the per-CPU counters. It speaks the vocabulary
// of package lb (Frontend, Target, Service).
package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
)

// DefaultPinPath is where maps and links are pinned unless Config says otherwise.
const DefaultPinPath = "/sys/fs/bpf/roam"

// Defaults applied by Open to zero Config fields.
const (
	DefaultPortMin     = 40000
	DefaultPortMax     = 60999
	DefaultIdleTimeout = 60 * time.Second
	DefaultMaxFlows    = 262144 // bpf/consts.h CT_MAX_ENTRIES and NAT_MAX_ENTRIES
	maxMaxFlows        = 1 << 26
)

// DefaultTimeouts are the flow timeouts Open applies to zero Timeouts fields.
var DefaultTimeouts = Timeouts{
	SYN:          5 * time.Second,
	SYNEvict:     250 * time.Millisecond,
	Established:  6 * time.Hour,
	Close:        5 * time.Second,
	TimeWait:     65 * time.Second,
	UDPDrain:     200 * time.Millisecond,
	SYNProxyHold: 10 * time.Second,
}

// ErrNotFound is returned for a frontend the data plane does not hold.
var ErrNotFound = errors.New("frontend not found")

// ErrGeneration is returned when a commit or an abort names a generation
// that is not in the state it needs (aborted, superseded, never staged, or
// already committed).
var ErrGeneration = errors.New("generation conflict")

// ErrBadTarget is returned for a target the frontend cannot take (invalid,
// or of another address family).
var ErrBadTarget = errors.New("bad target")

// Config is the node's data-plane configuration.
type Config struct {
	PinPath        string     // bpffs directory for maps and links; default /sys/fs/bpf/roam
	SNATv4, SNATv6 netip.Addr // source addresses of redirected flows, per family (either may be unset): each pool's first
	// SNATv4Count and SNATv6Count make each a pool: that many consecutive
	// addresses from SNATv4 (SNATv6) on, default 1, at most
	// MaxSNATPool. A new flow takes an (address, port) of pool x port
	// range, so a target can hold count x range flows at once; every pool
	// address must be routed to this node (replies to it are translated
	// back whether or not it is assigned to an interface). ParseSNATPool
	// reads the agent's form.
	SNATv4Count, SNATv6Count int
	PortMin, PortMax         uint16 // SNAT source port range; default 40000-60999
	IdleTimeout              time.Duration
	Timeouts                 Timeouts
	// MaxFlows is how many flows the conntrack and the NAT map each hold,
	// per family (IPv4 and IPv6 flows are in maps of their own, bpf/maps.h;
	// a full table refuses new flows and evicts none; GC frees); default
	// DefaultMaxFlows. Fixed when the maps are first pinned: opening the
	// pins with another size fails, naming the pinned size, until they are
	// removed (Unpin, which drops the node's flows).
	MaxFlows int
	// PreallocFlows preallocates the IPv4 flows' conntrack and NAT maps
	// (IPv6 flows' are always allocated per flow, flowMaps): all of
	// MaxFlows' elements at Open, one area as large as the table, instead
	// of an element from the kernel's allocator per new flow
	// (BPF_F_NO_PREALLOC, bpf/maps.h; the default here, for tests and
	// small tables). roam-agent sets it (--prealloc-flows): bench-dataplane
	// measured new flows 1.5-2.4x as fast preallocated (established
	// flows faster in 3 runs of 4, 1M flows mixed). Fixed when the maps are
	// first pinned: opening pins made the other way (of the same size)
	// keeps them as they are, with their flows, and logs it;
	// Dataplane.PreallocFlows reports what is in effect.
	PreallocFlows bool
	// ReservePorts keeps the host's own connections out of the SNAT port
	// range: if it overlaps net.ipv4.ip_local_port_range, Open adds it to
	// net.ipv4.ip_local_reserved_ports of the calling thread's network
	// namespace, or fails. roam-agent sets it; tests sharing a host's
	// namespace do not.
	ReservePorts bool
	// SRv6 is the SRv6 path mode (srv6.go); zero: off.
	SRv6 SRv6Config
	// SYNProxy says when XDP answers SYNs to redirected frontends itself
	// with SYN cookies, so that a spoofed SYN costs no SNAT port and never
	// reaches the target (bpf/synproxy.h); zero: off.
	SYNProxy SYNProxyMode
}

// SYNProxyMode says when the SYN proxy answers SYNs (bpf/consts.h SYNPROXY_*).
type SYNProxyMode uint8

const (
	SYNProxyOff SYNProxyMode = 0
	// SYNProxyAlways proxies every new TCP flow to a redirected frontend
	// (arriving through XDP): no SNAT port nor target SYN before the
	// client's cookie ACK. A proxied flow has MSS but no window scaling,
	// SACK or timestamps (at most 64 KB in flight).
	SYNProxyAlways SYNProxyMode = 1
	// SYNProxyFlood proxies for Timeouts.SYNProxyHold after SNAT ports
	// came under pressure (an embryonic flow evicted from its port, or no
	// port free), and keeps on while more than 64 cookies a second (and
	// more than half) go unanswered, as Linux's tcp_syncookies=1 sends
	// cookies only while its SYN queue overflows; flows started otherwise
	// keep all their options.
	SYNProxyFlood SYNProxyMode = 2
)

// ParseSYNProxyMode reads "off", "always" or "flood".
func ParseSYNProxyMode(s string) (SYNProxyMode, error) {
	switch s {
	case "off", "":
		return SYNProxyOff, nil
	case "always":
		return SYNProxyAlways, nil
	case "flood":
		return SYNProxyFlood, nil
	}
	return 0, fmt.Errorf("SYN proxy mode %q: want off, always or flood", s)
}

var synProxyModeNames = [...]string{SYNProxyOff: "off", SYNProxyAlways: "always", SYNProxyFlood: "flood"}

func (m SYNProxyMode) String() string { return enumName(synProxyModeNames[:], m, "synproxy") }

// Timeouts say how long a flow lives with no packet in either direction,
// by state. IdleTimeout (Config) is UDP's; a flow is "done" (no longer
// counted by Flows) before it times out: a TCP flow after both FINs or an
// RST, a UDP flow after UDPDrain once a commit moved its frontend away.
type Timeouts struct {
	SYN time.Duration // TCP until the client acknowledged the target (embryonic), counted from the client's last packet; default 5 s
	// SYNEvict: an embryonic flow whose client and target have both been
	// silent this long gives its SNAT port to a new flow that lands on it
	// (counted as drops{reason="syn_evicted"}); default 250 ms, longer
	// than a real client takes to answer the target's SYN-ACK (one round
	// trip) or the target to answer a SYN. A flood of spoofed SYNs then
	// holds a port for about this long, not for SYN.
	SYNEvict    time.Duration
	Established time.Duration // TCP established or half-closed; default 6 h (pooled HTTP/2, gRPC, database connections)
	Close       time.Duration // TCP done, the target without TIME_WAIT (the client closed first, or an RST); default 5 s
	TimeWait    time.Duration // TCP done, the target closed first: its TIME_WAIT (Linux: 60 s) outlives the port's hold; default 65 s
	UDP         time.Duration // set from Config.IdleTimeout
	// UDPDrain: a UDP flow idle this long once a commit moved its
	// frontend away from its target is done (default 200 ms): its next
	// packet goes to the new target, and a migration's drain no longer
	// waits for it (the old copy is then stopped, so a request it still
	// works on longer than this may lose its answer: raise it for such a
	// service).
	UDPDrain time.Duration
	// SYNProxyHold: with SYNProxyFlood, how long the SYN proxy stays on
	// after SNAT port pressure, and after more cookies than 64 a second
	// (and more than half) went unanswered; default 10 s.
	SYNProxyHold time.Duration
}

// Flow is one forward conntrack entry that has not timed out.
type Flow struct {
	Client netip.AddrPort `json:"client"`
	Proto  lb.Proto       `json:"proto"`
	Target lb.Target      `json:"target"`
	SNAT   netip.AddrPort `json:"snat,omitzero"` // redirect only
	State  string         `json:"state"`         // syn, established, fin_wait, closed, time_wait, reset; udp
	Done   bool           `json:"done"`          // over: not counted by Flows
	Idle   time.Duration  `json:"idle"`          // since the last packet in either direction
}

func (f Flow) String() string {
	s := fmt.Sprintf("%s/%s -> %s", f.Client, f.Proto, f.Target)
	if f.SNAT.IsValid() {
		s += " via " + f.SNAT.String()
	}
	s += " " + f.State
	if f.Done {
		s += " done"
	}
	return s + " idle " + f.Idle.Round(time.Millisecond).String()
}

// loadSpec returns the BPF object Open loads: the committed build of
// bpf/roam.c (tests swap in a build of their own, export_test.go).
var loadSpec = loadRoam

// Dataplane holds the loaded programs and pinned maps of one node.
type Dataplane struct {
	mu sync.Mutex
	// slots is roam_service_slots mapped into this process; flipped,
	// openGrace and freeGrace say when slots and ids may be rewritten
	// (services.go). Guarded by mu.
	slots     []byte
	flipped   map[uint32]chan struct{}
	openGrace chan struct{}
	freeGrace chan struct{}
	cfg       Config
	objs      roamObjects // both programs and their maps (bpf/roam.c)
	maps      *roamMaps
	// redirectErr and tcRedirectErr count the XDP and tc programs' failed
	// redirects (watchRedirectErrors).
	redirectErr, tcRedirectErr link.Link
	gcMu                       sync.Mutex
	gc                         gcState
	// targets hands out the target counters' indices (targetcount.go). Guarded by mu.
	targets targetIndex
	// replacedPins names the metrics-only maps whose incompatible pins
	// Open replaced (replaceablePins).
	replacedPins []string
	// preallocFlows: whether the flow maps in use are preallocated (PreallocFlows).
	preallocFlows bool
	// preallocIPv6: the pinned IPv6 flow maps found preallocated at Open
	// (an older build's, kept as pinned; logged).
	preallocIPv6 []string
	// legacy: IPv4 flows an older build pinned in roam_conntrack and
	// roam_nat may be left there (ct4.go): set at Open, cleared by the
	// first GC pass that finds none. legacyMoved and legacyFailed count
	// the entries GC moved and those the IPv4 maps had no room for (each
	// entry once: by the pass that removes it), legacyErrors the GC
	// passes whose merge failed (roam_dataplane_legacy_*), legacyStray the
	// IPv4 entries GC removed from the IPv6 maps after d.legacy was
	// cleared (gc.go gcFamily).
	legacy                                               atomic.Bool
	legacyMoved, legacyFailed, legacyErrors, legacyStray atomic.Uint64
}

// replaceablePins are the pinned maps that hold metrics only, no flow or
// configuration state: a pin of one left by another version with another
// layout is replaced at Open (its counts restart from zero) rather than
// refusing the upgrade. Any other incompatible pin (conntrack, NAT,
// frontends, ...) still fails Open with loadError's message.
var replaceablePins = []string{"roam_target_counters", "roam_counters", "roam_drops"}

// openPin opens the pin under pinPath of spec's map name, pinned by name;
// m is nil if the map is not pinned by name or has no pin yet.
func openPin(spec *ebpf.CollectionSpec, pinPath, name string) (ms *ebpf.MapSpec, m *ebpf.Map, path string, err error) {
	ms = spec.Maps[name]
	if ms == nil || ms.Pinning != ebpf.PinByName {
		return nil, nil, "", nil
	}
	path = filepath.Join(pinPath, name)
	m, err = ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, "", nil
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("open pinned %s: %w", path, err)
	}
	return ms, m, path, nil
}

// replaceIncompatiblePins removes, under pinPath, the pin of each map in
// replaceablePins that spec cannot re-open, so that loading pins a new one.
// It returns the names of the pins removed.
func replaceIncompatiblePins(spec *ebpf.CollectionSpec, pinPath string) ([]string, error) {
	var replaced []string
	for _, name := range replaceablePins {
		ms, m, path, err := openPin(spec, pinPath, name)
		if err != nil {
			return replaced, err
		}
		if m == nil {
			continue
		}
		incompatible := ms.Compatible(m)
		m.Close()
		if incompatible == nil {
			continue
		}
		if !errors.Is(incompatible, ebpf.ErrMapIncompatible) {
			return replaced, fmt.Errorf("check pinned %s: %w", path, incompatible)
		}
		if err := os.Remove(path); err != nil {
			return replaced, fmt.Errorf("replace pinned %s: %w", path, err)
		}
		slog.Warn("dataplane: pinned metrics map is from another version: replaced, its counts restart from zero",
			"map", name, "path", path, "why", incompatible)
		replaced = append(replaced, name)
	}
	return replaced, nil
}

// ReplacedPins returns the metrics-only maps whose pins, left by another
// version with another layout, Open replaced (their counts restarted).
func (d *Dataplane) ReplacedPins() []string {
	return append([]string(nil), d.replacedPins...)
}

// Open loads the BPF objects, creates or re-opens the maps pinned under
// cfg.PinPath (state of a previous run is kept) and writes the configuration.
func Open(cfg Config) (*Dataplane, error) {
	if cfg.PinPath == "" {
		cfg.PinPath = DefaultPinPath
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = DefaultPortMin, DefaultPortMax
	}
	if cfg.PortMin == 0 || cfg.PortMax < cfg.PortMin {
		return nil, fmt.Errorf("open dataplane: bad SNAT port range %d-%d", cfg.PortMin, cfg.PortMax)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxFlows < 1 || cfg.MaxFlows > maxMaxFlows {
		return nil, fmt.Errorf("open dataplane: max flows %d outside 1-%d", cfg.MaxFlows, maxMaxFlows)
	}
	cfg.Timeouts.UDP = cfg.IdleTimeout
	for _, t := range []struct{ v, def *time.Duration }{
		{&cfg.Timeouts.SYN, &DefaultTimeouts.SYN}, {&cfg.Timeouts.SYNEvict, &DefaultTimeouts.SYNEvict},
		{&cfg.Timeouts.Established, &DefaultTimeouts.Established},
		{&cfg.Timeouts.Close, &DefaultTimeouts.Close}, {&cfg.Timeouts.TimeWait, &DefaultTimeouts.TimeWait},
		{&cfg.Timeouts.UDPDrain, &DefaultTimeouts.UDPDrain}, {&cfg.Timeouts.SYNProxyHold, &DefaultTimeouts.SYNProxyHold},
	} {
		if *t.v <= 0 {
			*t.v = *t.def
		}
	}
	if cfg.SNATv4.IsValid() && !cfg.SNATv4.Unmap().Is4() {
		return nil, fmt.Errorf("open dataplane: SNAT v4 address %s is not IPv4", cfg.SNATv4)
	}
	if cfg.SNATv6.IsValid() && (cfg.SNATv6.Is4() || cfg.SNATv6.Is4In6()) {
		return nil, fmt.Errorf("open dataplane: SNAT v6 address %s is not IPv6", cfg.SNATv6)
	}
	cfg.SNATv4 = cfg.SNATv4.Unmap()
	for _, p := range []struct {
		first netip.Addr
		count *int
	}{{cfg.SNATv4, &cfg.SNATv4Count}, {cfg.SNATv6, &cfg.SNATv6Count}} {
		if *p.count == 0 && p.first.IsValid() {
			*p.count = 1
		}
		if err := checkSNATPool(p.first, *p.count); err != nil {
			return nil, fmt.Errorf("open dataplane: %w", err)
		}
	}
	if cfg.ReservePorts {
		if err := reservePorts(cfg.PortMin, cfg.PortMax); err != nil {
			return nil, fmt.Errorf("open dataplane: %w", err)
		}
	}
	if err := checkBPFFS(cfg.PinPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinPath, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("open dataplane: create pin path: %w (is bpffs mounted at /sys/fs/bpf? mount -t bpf bpf /sys/fs/bpf)", err)
	}

	d := &Dataplane{cfg: cfg}
	if err := d.load(); err != nil {
		return nil, loadError("bpf", cfg.PinPath, err)
	}
	d.maps = &d.objs.roamMaps
	// IPv4 flows of an older build (one map for both families): copied
	// now, before this build's programs are attached (ct4.go).
	d.legacy.Store(true)
	if err := d.mergeLegacyFlows(false); err != nil {
		d.Close()
		return nil, fmt.Errorf("open dataplane: %w", err)
	}
	if err := d.mapSlots(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.loadTargetIndex(); err != nil {
		d.Close()
		return nil, fmt.Errorf("open dataplane: %w", err)
	}
	if err := d.watchRedirectErrors(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.writeConfig(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.writeSRv6Config(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// load loads the BPF object (both programs) with its maps sized for
// cfg.MaxFlows and pinned under cfg.PinPath (re-opened if pinned already).
func (d *Dataplane) load() error {
	spec, err := loadSpec()
	if err != nil {
		return err
	}
	for _, name := range flowMaps {
		if m := spec.Maps[name]; m != nil {
			m.MaxEntries = uint32(d.cfg.MaxFlows)
			if d.cfg.PreallocFlows && preallocated(name) {
				m.Flags &^= unix.BPF_F_NO_PREALLOC
			}
		}
	}
	if err := d.checkFlowPins(spec); err != nil {
		return err
	}
	if d.replacedPins, err = replaceIncompatiblePins(spec, d.cfg.PinPath); err != nil {
		return err
	}
	return nameProgram(spec, spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.cfg.PinPath}}))
}

// flowMaps are the pinned maps holding flow state, each sized by MaxFlows:
// IPv4 flows' (allocated as PreallocFlows says) and IPv6 flows' (from the
// kernel's allocator per flow: preallocated, they would double the
// memory a node sets aside for flows, most of it for a family it may
// not carry).
var flowMaps = []string{"roam_ct4", "roam_nat4", "roam_conntrack", "roam_nat"}

// preallocated: PreallocFlows applies to the flow map name (the IPv4 flows').
func preallocated(name string) bool { return name == "roam_ct4" || name == "roam_nat4" }

// flowSizeError is a pinned conntrack or NAT map of the same layout whose
// size differs from this configuration (Config.MaxFlows): a configuration
// change, not another version.
type flowSizeError struct {
	path                    string
	pinEntries, wantEntries uint32
}

func (e *flowSizeError) Error() string {
	return fmt.Sprintf("pinned map %s holds %d flows, this configuration %d: set MaxFlows back to %d (roam-agent: its default), "+
		"or remove the pins (rm -r %s, which drops the node's flows and detaches its programs)",
		e.path, e.pinEntries, e.wantEntries, e.pinEntries, filepath.Dir(e.path))
}

func (e *flowSizeError) Unwrap() error { return ebpf.ErrMapIncompatible }

// checkFlowPins compares the flow maps pinned under the pin path (if any)
// with spec. Pins differing only in BPF_F_NO_PREALLOC are kept as they are:
// spec takes their flags (the node keeps its flows; logged once, and
// PreallocFlows reports what is in effect). Pins of the same layout and
// another size are refused with a flowSizeError.
func (d *Dataplane) checkFlowPins(spec *ebpf.CollectionSpec) error {
	d.preallocFlows, d.preallocIPv6 = d.cfg.PreallocFlows, nil
	for _, name := range flowMaps {
		ms, m, path, err := openPin(spec, d.cfg.PinPath, name)
		if err != nil {
			return err
		}
		if m == nil {
			continue
		}
		sameLayout := m.Type() == ms.Type && m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize
		entries, flags := m.MaxEntries(), m.Flags()
		m.Close()
		if !sameLayout {
			continue // another version: LoadAndAssign refuses it (loadError)
		}
		if entries != ms.MaxEntries {
			return &flowSizeError{path: path, pinEntries: entries, wantEntries: ms.MaxEntries}
		}
		if flags^ms.Flags == unix.BPF_F_NO_PREALLOC {
			// Kept as pinned (an IPv6 map: an older build may have preallocated it).
			ms.Flags = flags
			if preallocated(name) {
				d.preallocFlows = flags&unix.BPF_F_NO_PREALLOC == 0
			}
		}
		if !preallocated(name) && flags&unix.BPF_F_NO_PREALLOC == 0 {
			d.preallocIPv6 = append(d.preallocIPv6, name)
		}
	}
	if len(d.preallocIPv6) > 0 {
		// An older build's map (both families, preallocated), kept with
		// its flows beside this build's preallocated IPv4 maps.
		slog.Warn("dataplane: pinned IPv6 flow maps are preallocated (an older build's): the node's flow maps take about twice "+
			"their memory (~176 MB instead of ~90 MB at the default --max-flows) until drained and unpinned (rm -r the pin path, "+
			"which drops the node's flows and detaches its programs)", "path", d.cfg.PinPath, "maps", d.preallocIPv6)
	}
	if d.preallocFlows != d.cfg.PreallocFlows {
		slog.Warn("dataplane: the node keeps its pinned "+allocText(d.preallocFlows)+" flow maps (conntrack, NAT) and their flows; "+
			"making them "+allocText(d.cfg.PreallocFlows)+" needs the maps unpinned (rm -r the pin path), which drops the node's flows",
			"path", d.cfg.PinPath, "prealloc_flows_configured", d.cfg.PreallocFlows, "prealloc_flows_in_effect", d.preallocFlows)
	}
	return nil
}

// nameProgram makes a verifier error of LoadAndAssign name the program it
// is about (cilium/ebpf says "program NAME: ..." in the chain, which the
// verbose verifier log loadError prints would otherwise drop).
func nameProgram(spec *ebpf.CollectionSpec, err error) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return err
	}
	for name := range spec.Programs {
		if strings.Contains(err.Error(), "program "+name+":") {
			return &programError{prog: name, err: err}
		}
	}
	return err
}

// programError is a load failure of the program prog.
type programError struct {
	prog string
	err  error
}

func (e *programError) Error() string { return e.err.Error() }
func (e *programError) Unwrap() error { return e.err }

func allocText(prealloc bool) string {
	if prealloc {
		return "preallocated"
	}
	return "on-demand"
}

// PreallocFlows reports whether the conntrack and NAT maps in use are
// preallocated: Config.PreallocFlows, unless maps pinned the other way
// were kept (checkFlowPins).
func (d *Dataplane) PreallocFlows() bool { return d.preallocFlows }

func loadError(what, pinPath string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		var pe *programError
		if errors.As(err, &pe) {
			what = pe.prog
		}
		return fmt.Errorf("load %s program: %+v", what, ve)
	}
	var fe *flowSizeError
	if errors.As(err, &fe) {
		return fmt.Errorf("load %s objects: %w", what, err)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load %s objects: %w (maps pinned under %s are from another version: remove them, rm -r %[3]s, which drops the node's flows and detaches its programs)", what, err, pinPath)
	}
	return fmt.Errorf("load %s objects: %w", what, err)
}

// checkBPFFS makes sure path is (or will be created) on a bpf file system.
func checkBPFFS(path string) error {
	dir := path
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("open dataplane: stat %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("open dataplane: %s is not on bpffs (mount -t bpf bpf /sys/fs/bpf)", path)
	}
	return nil
}

func (d *Dataplane) writeConfig() error {
	var c roamConfig
	if d.cfg.SNATv4.IsValid() {
		c.Snat4 = addr16(d.cfg.SNATv4.Unmap())
		c.HasSnat4, c.Snat4Count = 1, uint32(d.cfg.SNATv4Count)
	}
	if d.cfg.SNATv6.IsValid() {
		c.Snat6 = addr16(d.cfg.SNATv6)
		c.HasSnat6, c.Snat6Count = 1, uint32(d.cfg.SNATv6Count)
	}
	c.PortMin, c.PortMax = d.cfg.PortMin, d.cfg.PortMax
	c.Synproxy = uint8(d.cfg.SYNProxy)
	t := d.cfg.Timeouts
	c.TcpSynNs, c.TcpSynEvictNs, c.TcpEstablishedNs = uint64(t.SYN), uint64(t.SYNEvict), uint64(t.Established)
	c.TcpCloseNs, c.TcpTimeWaitNs = uint64(t.Close), uint64(t.TimeWait)
	c.UdpNs, c.UdpDrainNs = uint64(t.UDP), uint64(t.UDPDrain)
	c.SynproxyHoldNs = uint64(t.SYNProxyHold)
	if err := d.maps.RoamConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Close closes the file descriptors. Pinned maps and links stay: traffic keeps flowing.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	err := d.unmapSlots()
	d.mu.Unlock()
	var errs []error
	for _, l := range []link.Link{d.redirectErr, d.tcRedirectErr} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	return errors.Join(append(errs, err, d.objs.Close())...)
}

// watchRedirectErrors attaches roam_redirect_err to the tracepoint
// xdp:xdp_redirect_err, counting as redirect_failed the redirects of this
// data plane's XDP program the kernel could not carry out, and
// roam_tc_redirect_drop to skb:kfree_skb for the tc program's (with where
// the kernel's redirect code lies, redirectText; bpf/counters.h). The
// links live as long as the data plane.
func (d *Dataplane) watchRedirectErrors() error {
	info, err := d.objs.RoamXdp.Info()
	if err != nil {
		return fmt.Errorf("read xdp program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return fmt.Errorf("read xdp program id: the kernel does not say")
	}
	if err := d.objs.RoamSelf.Put(uint32(0), uint32(id)); err != nil {
		return fmt.Errorf("write roam_self: %w", err)
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: d.objs.RoamRedirectErr})
	if err != nil {
		return fmt.Errorf("attach roam_redirect_err to xdp:xdp_redirect_err: %w", err)
	}
	d.redirectErr = l
	text, err := redirectText("/proc/kallsyms")
	if err != nil {
		return err
	}
	if err := d.objs.RoamTcRedirectText.Put(uint32(0), text); err != nil {
		return fmt.Errorf("write roam_tc_redirect_text: %w", err)
	}
	if d.tcRedirectErr, err = link.AttachTracing(link.TracingOptions{Program: d.objs.RoamTcRedirectDrop}); err != nil {
		return fmt.Errorf("attach roam_tc_redirect_drop to skb:kfree_skb: %w", err)
	}
	return nil
}

// Unpin removes everything pinned under pinPath: links (which detaches the
// programs once no process holds them) and maps.
func Unpin(pinPath string) error {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	if err := os.RemoveAll(pinPath); err != nil {
		return fmt.Errorf("unpin %s: %w", pinPath, err)
	}
	return nil
}

// checkFrontend refuses a frontend that replies to redirected flows could
// be mistaken for: on a SNAT pool address, inside the SNAT port range.
func (d *Dataplane) checkFrontend(f lb.Frontend) error {
	a := f.Addr.Unmap()
	if (inSNATPool(a, d.cfg.SNATv4, d.cfg.SNATv4Count) || inSNATPool(a, d.cfg.SNATv6, d.cfg.SNATv6Count)) &&
		f.Port >= d.cfg.PortMin && f.Port <= d.cfg.PortMax {
		return fmt.Errorf("frontend %s: port inside the SNAT range %d-%d of its address", f, d.cfg.PortMin, d.cfg.PortMax)
	}
	return nil
}

// Remove deletes f and its flows (conntrack and NAT entries); its traffic
// then passes untouched.
func (d *Dataplane) Remove(f lb.Frontend) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, err := d.lookupID(f)
	if err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	if err := d.deleteFrontend(f); err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	// Every map, an older build's IPv4 entries in the IPv6 maps included
	// (ct4.go): one left would be moved back by the next GC pass.
	var dead, deadNAT []CTKey
	var legacy, legacyNAT []CTKey
	err = walkMap(d.maps.RoamConntrack, func(k CTKey, v CTValue) {
		if v.FrontendId == id && k.Family == familyV4 {
			legacy = append(legacy, k)
		}
	})
	if err == nil {
		err = walkMap(d.maps.RoamNat, func(k CTKey, v NATValue) {
			if v.FrontendId == id && k.Family == familyV4 {
				legacyNAT = append(legacyNAT, k)
			}
		})
	}
	if err == nil {
		err = walkFlows(d.ctTable(), func(k CTKey, v CTValue) {
			if v.FrontendId == id {
				dead = append(dead, k)
			}
		})
	}
	if err == nil {
		err = walkFlows(d.natTable(), func(k CTKey, v NATValue) {
			if v.FrontendId == id {
				deadNAT = append(deadNAT, k)
			}
		})
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	for _, del := range []struct {
		m    *ebpf.Map
		keys []CTKey
	}{{d.maps.RoamConntrack, legacy}, {d.maps.RoamNat, legacyNAT}} {
		for i := range del.keys {
			if err := del.m.Delete(&del.keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("remove %s: delete flow %s: %w", f, del.keys[i], err)
			}
		}
	}
	if err := d.deleteFlows(dead, deadNAT); err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	return nil
}

// deleteFlows deletes the conntrack entries ct and the NAT entries nat
// (each from its family's map); one already gone is not an error.
func (d *Dataplane) deleteFlows(ct, nat []CTKey) error {
	for _, del := range []struct {
		t    flowTable
		keys []CTKey
	}{{d.ctTable(), ct}, {d.natTable(), nat}} {
		for _, k := range del.keys {
			if err := del.t.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete flow %s: %w", k, err)
			}
		}
	}
	return nil
}

// resetCounters zeroes a frontend id's counters before the id is reused.
func (d *Dataplane) resetCounters(id uint32) error {
	zero := make([]Counter, ebpf.MustPossibleCPU())
	for a := uint32(0); a < numActions; a++ {
		if err := d.maps.RoamCounters.Put(id*numActions+a, zero); err != nil {
			return fmt.Errorf("reset counters: %w", err)
		}
	}
	return nil
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// flowView is a forward entry as Flows and FlowList judge it, the way the
// programs would (plus coarseSlack).
type flowView struct {
	seen    uint64 // last packet in either direction
	done    bool
	expired bool
}

// viewFlows calls fn for each of f's forward entries.
func (d *Dataplane) viewFlows(f lb.Frontend, fn func(CTKey, CTValue, flowView, uint64)) error {
	_, svc, err := d.readService(f)
	if err != nil {
		return err
	}
	active := svc.Slot[svc.Active&1].Target()
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	t := d.cfg.Timeouts
	return walkFlows(d.ctTable(), func(k CTKey, v CTValue) {
		if v.FrontendId != svc.Id {
			return
		}
		kind := lb.TargetKind(v.Kind)
		timeout := t.timeout(k.Proto, v.State, kind)
		soonest := timeout // the shortest idle time that changes the verdict
		if k.Proto != protoTCP {
			soonest = t.UDPDrain
		}
		fv := flowView{seen: v.LastSeen}
		if kind == lb.TargetRedirect && !embryonic(k.Proto, v.State, kind) && idleLonger(now, fv.seen, soonest) {
			// Quiet this way: the reply direction may still be live.
			var nv NATValue
			if d.natTable().Lookup(v.natKey(k.Proto), &nv) == nil && nv.ownedBy(k) && nv.LastSeen > fv.seen {
				fv.seen = nv.LastSeen
			}
		}
		fv.expired = idleLonger(now, fv.seen, timeout)
		if k.Proto == protoTCP {
			fv.done = ctDone(v.State, kind)
		} else {
			fv.done = idleLonger(now, fv.seen, t.UDPDrain) && v.Target() != active
		}
		fn(k, v, fv, now)
	})
}

// Flows counts f's flows pinned to t that are neither done nor timed out:
// what a migration waits on before it stops t. A TCP flow is done after
// both FINs or an RST (a local one at the client's FIN), a UDP flow once a
// commit moved f away from t and it has been idle for Timeouts.UDPDrain;
// the programs treat such a flow as over too (a new SYN, or any UDP
// packet, takes f's active target).
func (d *Dataplane) Flows(f lb.Frontend, t lb.Target) (int, error) {
	n := 0
	err := d.viewFlows(f, func(_ CTKey, v CTValue, fv flowView, _ uint64) {
		if !fv.done && !fv.expired && v.Target() == t {
			n++
		}
	})
	if err != nil {
		return 0, fmt.Errorf("count flows of %s: %w", f, err)
	}
	return n, nil
}

// FlowList returns f's flows that have not timed out, done ones included.
func (d *Dataplane) FlowList(f lb.Frontend) ([]Flow, error) {
	var out []Flow
	err := d.viewFlows(f, func(k CTKey, v CTValue, fv flowView, now uint64) {
		if fv.expired {
			return
		}
		fl := Flow{
			Client: netip.AddrPortFrom(addrFrom16(k.Saddr, k.Family), htons(k.Sport)),
			Proto:  lb.Proto(k.Proto),
			Target: v.Target(),
			State:  flowState(v.State, lb.TargetKind(v.Kind), k.Proto),
			Done:   fv.done,
		}
		if now > fv.seen {
			fl.Idle = time.Duration(now - fv.seen)
		}
		if lb.TargetKind(v.Kind) == lb.TargetRedirect {
			fl.SNAT = netip.AddrPortFrom(addrFrom16(v.SnatAddr, v.Family), htons(v.SnatPort))
		}
		out = append(out, fl)
	})
	if err != nil {
		return nil, fmt.Errorf("list flows of %s: %w", f, err)
	}
	return out, nil
}
