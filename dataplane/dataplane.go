package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where maps and links are pinned unless Config says otherwise.
const DefaultPinPath = "/sys/fs/bpf/roam"

// Defaults applied by Open to zero Config fields.
const (
	DefaultPortMin     = 40000
	DefaultPortMax     = 60999
	DefaultIdleTimeout = 60 * time.Second
)

// ErrNotFound is returned for a frontend the data plane does not hold.
var ErrNotFound = errors.New("frontend not found")

// Config is the node's data-plane configuration.
type Config struct {
	PinPath          string     // bpffs directory for maps and links; default /sys/fs/bpf/roam
	SNATv4, SNATv6   netip.Addr // source addresses of redirected flows, per family (either may be unset)
	PortMin, PortMax uint16     // SNAT source port range; default 40000-60999
	IdleTimeout      time.Duration
}

// Flow is one live forward conntrack entry.
type Flow struct {
	Client  netip.AddrPort `json:"client"`
	Proto   Proto          `json:"proto"`
	Target  Target         `json:"target"`
	SNAT    netip.AddrPort `json:"snat,omitzero"` // redirect only
	Closing bool           `json:"closing"`
	Idle    time.Duration  `json:"idle"`
}

func (f Flow) String() string {
	s := fmt.Sprintf("%s/%s -> %s", f.Client, f.Proto, f.Target)
	if f.SNAT.IsValid() {
		s += " via " + f.SNAT.String()
	}
	if f.Closing {
		s += " closing"
	}
	return s + " idle " + f.Idle.Round(time.Millisecond).String()
}

// Dataplane holds the loaded programs and pinned maps of one node.
type Dataplane struct {
	mu   sync.Mutex
	cfg  Config
	xdp  roamXDPObjects
	tc   roamTCObjects
	maps *roamXDPMaps
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
	if cfg.SNATv4.IsValid() && !cfg.SNATv4.Unmap().Is4() {
		return nil, fmt.Errorf("open dataplane: SNAT v4 address %s is not IPv4", cfg.SNATv4)
	}
	if cfg.SNATv6.IsValid() && (cfg.SNATv6.Is4() || cfg.SNATv6.Is4In6()) {
		return nil, fmt.Errorf("open dataplane: SNAT v6 address %s is not IPv6", cfg.SNATv6)
	}
	if err := checkBPFFS(cfg.PinPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinPath, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("open dataplane: create pin path: %w (is bpffs mounted at /sys/fs/bpf? mount -t bpf bpf /sys/fs/bpf)", err)
	}

	d := &Dataplane{cfg: cfg}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinPath}}
	if err := loadRoamXDPObjects(&d.xdp, opts); err != nil {
		return nil, loadError("xdp", cfg.PinPath, err)
	}
	if err := loadRoamTCObjects(&d.tc, opts); err != nil {
		d.xdp.Close()
		return nil, loadError("tc", cfg.PinPath, err)
	}
	d.maps = &d.xdp.roamXDPMaps
	if err := d.writeConfig(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func loadError(what, pinPath string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load %s program: %+v", what, ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("load %s objects: %w (maps pinned under %s are from another version: dataplane.Unpin it)", what, err, pinPath)
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
	var c roamXDPConfig
	if d.cfg.SNATv4.IsValid() {
		c.Snat4 = addr16(d.cfg.SNATv4.Unmap())
		c.HasSnat4 = 1
	}
	if d.cfg.SNATv6.IsValid() {
		c.Snat6 = addr16(d.cfg.SNATv6)
		c.HasSnat6 = 1
	}
	c.PortMin, c.PortMax = d.cfg.PortMin, d.cfg.PortMax
	c.IdleTimeoutNs = uint64(d.cfg.IdleTimeout)
	if err := d.maps.RoamConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Config returns the configuration in effect (defaults filled in).
func (d *Dataplane) Config() Config { return d.cfg }

// Close closes the file descriptors. Pinned maps and links stay: traffic keeps flowing.
func (d *Dataplane) Close() error {
	return errors.Join(d.xdp.Close(), d.tc.Close())
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

// Stage writes t into f's inactive slot and returns the new generation.
// Traffic does not see it until Commit. A frontend not yet present is
// created with no active target (its packets pass untouched).
func (d *Dataplane) Stage(f Frontend, t Target) (uint64, error) {
	if err := f.Validate(); err != nil {
		return 0, fmt.Errorf("stage: %w", err)
	}
	if err := t.Validate(); err != nil {
		return 0, fmt.Errorf("stage: %w", err)
	}
	if t.Kind == TargetRedirect && familyOf(t.Addr) != familyOf(f.Addr) {
		return 0, fmt.Errorf("stage %s: target %s is of another address family", f, t)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	key := frontendKey(f)
	var svc ServiceValue
	err := d.maps.RoamServices.Lookup(&key, &svc)
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		id, err := d.freeID()
		if err != nil {
			return 0, fmt.Errorf("stage %s: %w", f, err)
		}
		if err := d.resetCounters(id); err != nil {
			return 0, fmt.Errorf("stage %s: %w", f, err)
		}
		svc = ServiceValue{Id: id}
	case err != nil:
		return 0, fmt.Errorf("stage %s: read service: %w", f, err)
	}
	svc.Generation++
	svc.Slot[(svc.Active&1)^1] = targetValue(t)
	// The whole element is written at once; the active slot is untouched.
	if err := d.maps.RoamServices.Update(&key, &svc, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("stage %s: write service: %w", f, err)
	}
	return svc.Generation, nil
}

// Commit makes f's staged target active for new flows (flows already pinned
// keep their target). gen must be the generation Stage returned, or 0 for
// whatever is staged. Committing the same generation twice is a no-op.
//
// The flip is one map update of the whole element (new active index, old
// slot cleared). roam_services is BPF_F_NO_PREALLOC, so the update links a
// freshly allocated element and frees the old one after an RCU grace
// period: a program that looked up the old element keeps reading a
// consistent old copy (and copies its target to the stack at once); no
// reader can observe a half-written element or a slot index of one version
// with the slots of another.
func (d *Dataplane) Commit(f Frontend, gen uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := frontendKey(f)
	var svc ServiceValue
	if err := d.maps.RoamServices.Lookup(&key, &svc); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("commit %s: %w", f, ErrNotFound)
		}
		return fmt.Errorf("commit %s: read service: %w", f, err)
	}
	staged := (svc.Active & 1) ^ 1
	if gen != 0 && gen != svc.Generation {
		return fmt.Errorf("commit %s: generation %d is not the staged one (%d)", f, gen, svc.Generation)
	}
	if TargetKind(svc.Slot[staged].Kind) == TargetNone {
		if gen != 0 {
			return nil // already committed
		}
		return fmt.Errorf("commit %s: nothing staged", f)
	}
	svc.Slot[svc.Active&1] = TargetValue{}
	svc.Active = staged
	if err := d.maps.RoamServices.Update(&key, &svc, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("commit %s: write service: %w", f, err)
	}
	return nil
}

// Abort clears f's staged slot. A frontend that was only staged is removed.
func (d *Dataplane) Abort(f Frontend) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := frontendKey(f)
	var svc ServiceValue
	if err := d.maps.RoamServices.Lookup(&key, &svc); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("abort %s: read service: %w", f, err)
	}
	if TargetKind(svc.Slot[svc.Active&1].Kind) == TargetNone {
		if err := d.maps.RoamServices.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("abort %s: delete service: %w", f, err)
		}
		return nil
	}
	svc.Slot[(svc.Active&1)^1] = TargetValue{}
	if err := d.maps.RoamServices.Update(&key, &svc, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("abort %s: write service: %w", f, err)
	}
	return nil
}

// Remove deletes f and its conntrack entries; its traffic then passes untouched.
func (d *Dataplane) Remove(f Frontend) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := frontendKey(f)
	var svc ServiceValue
	if err := d.maps.RoamServices.Lookup(&key, &svc); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s: %w", f, ErrNotFound)
		}
		return fmt.Errorf("remove %s: read service: %w", f, err)
	}
	if err := d.maps.RoamServices.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove %s: delete service: %w", f, err)
	}
	var dead []CTKey
	err := d.walkConntrack(func(k CTKey, v CTValue) {
		if v.FrontendId == svc.Id {
			dead = append(dead, k)
		}
	})
	if err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	for i := range dead {
		if err := d.maps.RoamConntrack.Delete(&dead[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove %s: delete flow: %w", f, err)
		}
	}
	return nil
}

// Get returns f's service.
func (d *Dataplane) Get(f Frontend) (Service, error) {
	key := frontendKey(f)
	var svc ServiceValue
	if err := d.maps.RoamServices.Lookup(&key, &svc); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Service{}, fmt.Errorf("get %s: %w", f, ErrNotFound)
		}
		return Service{}, fmt.Errorf("get %s: %w", f, err)
	}
	return svc.service(f), nil
}

// List returns every frontend's service.
func (d *Dataplane) List() ([]Service, error) {
	var (
		k   FrontendKey
		v   ServiceValue
		out []Service
	)
	it := d.maps.RoamServices.Iterate()
	for it.Next(&k, &v) {
		out = append(out, v.service(k.Frontend()))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// freeID returns the lowest frontend id not used in the services map (ids
// are recovered from the map, so a restarted agent keeps them).
func (d *Dataplane) freeID() (uint32, error) {
	used := make(map[uint32]bool)
	var (
		k FrontendKey
		v ServiceValue
	)
	it := d.maps.RoamServices.Iterate()
	for it.Next(&k, &v) {
		used[v.Id] = true
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("walk services: %w", err)
	}
	for id := uint32(1); id < maxFrontends; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("all %d frontend ids in use", maxFrontends-1)
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

// forwardFlows walks conntrack for f's live forward entries.
func (d *Dataplane) forwardFlows(f Frontend, fn func(CTKey, CTValue, uint64)) error {
	key := frontendKey(f)
	var svc ServiceValue
	if err := d.maps.RoamServices.Lookup(&key, &svc); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ErrNotFound
		}
		return err
	}
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	return d.walkConntrack(func(k CTKey, v CTValue) {
		if v.Dir != ctForward || v.FrontendId != svc.Id || v.expired(now, d.cfg.IdleTimeout) {
			return
		}
		fn(k, v, now)
	})
}

// Flows counts f's live flows (not closed, not idle-expired) pinned to t:
// what a migration waits on before it drains t.
func (d *Dataplane) Flows(f Frontend, t Target) (int, error) {
	n := 0
	err := d.forwardFlows(f, func(_ CTKey, v CTValue, _ uint64) {
		if v.target() == t {
			n++
		}
	})
	if err != nil {
		return 0, fmt.Errorf("count flows of %s: %w", f, err)
	}
	return n, nil
}

// FlowList returns f's live flows.
func (d *Dataplane) FlowList(f Frontend) ([]Flow, error) {
	var out []Flow
	err := d.forwardFlows(f, func(k CTKey, v CTValue, now uint64) {
		fl := Flow{
			Client:  netip.AddrPortFrom(addrFrom16(k.Saddr, k.Family), htons(k.Sport)),
			Proto:   Proto(k.Proto),
			Target:  v.target(),
			Closing: v.Flags&ctFlagClosing != 0,
		}
		if now > v.LastSeen {
			fl.Idle = time.Duration(now - v.LastSeen)
		}
		if TargetKind(v.Kind) == TargetRedirect {
			fl.SNAT = netip.AddrPortFrom(addrFrom16(v.NatAddr, v.Family), htons(v.NatPort))
		}
		out = append(out, fl)
	})
	if err != nil {
		return nil, fmt.Errorf("list flows of %s: %w", f, err)
	}
	return out, nil
}
