package dataplane

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
)

// Frontends live in two maps (bpf/maps.h): roam_services, a hash from a
// frontend to its id, written only when a frontend is added or removed; and
// roam_service_slots, an array of records (two target slots and the active
// index) indexed by id, which this process maps into its memory.
//
// Why reads are consistent without waiting on the path of a migration:
//
//   - An array element is never freed or reused: a program that found a
//     record reads that record, whatever the agent writes meanwhile.
//   - Stage writes the target into the inactive slot with plain stores;
//     Commit publishes it with one aligned atomic store of active
//     (atomic.StoreUint32: a release on every architecture Go supports).
//     A program reads active once and copies the slot it names; the slot's
//     address depends on the value it read, so it sees the slot's stores
//     that came before the store of active (the ordering rcu_dereference
//     relies on). No syscall memcpy is in between whose order of stores is
//     not promised.
//   - A slot is rewritten (Stage) only once a full RCU grace period has
//     passed since the commit that made it inactive: every program that
//     could have read the old active index has finished by then. Commit
//     starts that grace period in the background as it returns
//     (waitReaders), so Stage waits only when it comes within a grace
//     period of the commit (a few ms; migrations are seconds apart). A new
//     Dataplane does not know when its predecessor last committed: every
//     slot counts as flipped at Open.
//   - A hash element of roam_services can be reused at once after a delete
//     (Linux 6.1+), and an id's record read by a program that found the
//     deleted element: after a delete (Remove, Abort of a frontend that was
//     only staged), no frontend is added before a grace period has passed.
//
// Writers of one pin path must be one Dataplane at a time (the agent).

// fallbackGrace is the wait for readers where membarrier cannot wait for an
// RCU grace period.
const fallbackGrace = 100 * time.Millisecond

// The membarrier(2) commands used (linux/membarrier.h).
const membarrierCmdGlobal = 1

// waitReaders returns once every BPF program running when it was called
// has finished. XDP and tc programs run inside RCU read-side sections, and
// membarrier(MEMBARRIER_CMD_GLOBAL) is synchronize_rcu(). Where the kernel
// refuses it (CPUs in nohz_full mode), it sleeps fallbackGrace, thousands
// of times a program's run but not a proof.
func waitReaders() {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno == 0 {
		return
	}
	time.Sleep(fallbackGrace)
}

// startGrace returns a channel closed once every program running now has
// finished.
func startGrace() chan struct{} {
	done := make(chan struct{})
	go func() {
		waitReaders()
		close(done)
	}()
	return done
}

// recordSize is the size of one record in roam_service_slots (a multiple of
// 8: the array's element stride).
const recordSize = unsafe.Sizeof(ServiceValue{})

// mapSlots maps roam_service_slots and starts the grace period that every
// slot waits for before its first rewrite.
func (d *Dataplane) mapSlots() error {
	m := d.maps.RoamServiceSlots
	if uintptr(m.ValueSize()) != recordSize || recordSize%8 != 0 {
		return fmt.Errorf("open dataplane: roam_service_slots value is %d bytes, the agent's record %d", m.ValueSize(), recordSize)
	}
	size := int(m.MaxEntries()) * int(recordSize)
	page := unix.Getpagesize()
	size = (size + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("open dataplane: map roam_service_slots into memory: %w", err)
	}
	d.slots = mem
	d.flipped = make(map[uint32]chan struct{})
	d.openGrace = startGrace()
	return nil
}

func (d *Dataplane) unmapSlots() error {
	if d.slots == nil {
		return nil
	}
	err := unix.Munmap(d.slots)
	d.slots = nil
	if err != nil {
		return fmt.Errorf("unmap roam_service_slots: %w", err)
	}
	return nil
}

// record is id's record, in the map's memory.
func (d *Dataplane) record(id uint32) *ServiceValue {
	return (*ServiceValue)(unsafe.Pointer(&d.slots[uintptr(id)*recordSize]))
}

// readRecord copies id's record (active read atomically).
func (d *Dataplane) readRecord(id uint32) ServiceValue {
	r := d.record(id)
	v := *r
	v.Active = atomic.LoadUint32(&r.Active)
	return v
}

// lookupID returns f's id (ErrNotFound when there is none).
func (d *Dataplane) lookupID(f lb.Frontend) (uint32, error) {
	key := frontendKey(f)
	var id uint32
	if err := d.maps.RoamServices.Lookup(&key, &id); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, ErrNotFound
		}
		return 0, fmt.Errorf("read service: %w", err)
	}
	if id == 0 || id >= maxFrontends {
		return 0, fmt.Errorf("read service: id %d out of range", id)
	}
	return id, nil
}

// readService reads f's record (ErrNotFound when there is none).
func (d *Dataplane) readService(f lb.Frontend) (FrontendKey, ServiceValue, error) {
	key := frontendKey(f)
	id, err := d.lookupID(f)
	if err != nil {
		return key, ServiceValue{}, err
	}
	return key, d.readRecord(id), nil
}

// waitFlipped returns once id's inactive slot may be rewritten: a grace
// period has passed since the commit that made it inactive. d.mu is held.
func (d *Dataplane) waitFlipped(id uint32) {
	g := d.flipped[id]
	if g == nil {
		g = d.openGrace
	}
	<-g
	delete(d.flipped, id)
}

// waitFreed returns once a frontend may be added: a grace period has
// passed since the last delete from roam_services and since Open. d.mu is
// held.
func (d *Dataplane) waitFreed() {
	<-d.openGrace
	if d.freeGrace != nil {
		<-d.freeGrace
		d.freeGrace = nil
	}
}

// deleteFrontend deletes f from roam_services and starts the grace period
// before the next add. d.mu is held.
func (d *Dataplane) deleteFrontend(f lb.Frontend) error {
	key := frontendKey(f)
	var (
		id    uint32
		slots []TargetValue
	)
	if d.maps.RoamServices.Lookup(&key, &id) == nil && id > 0 && id < maxFrontends {
		r := d.readRecord(id)
		slots = r.Slot[:]
	}
	err := d.maps.RoamServices.Delete(&key)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service: %w", err)
	}
	d.freeGrace = startGrace()
	// Packets that found f before the delete may copy its slots' indices
	// into new flows until the grace has passed: only then have they left.
	for _, s := range slots {
		d.slotLeftAfter(s, d.freeGrace)
	}
	return nil
}

// hasStaged reports whether r's inactive slot holds a staged target.
func hasStaged(r *ServiceValue, active uint32) bool {
	return r.SlotGen[active^1] != 0 && lb.TargetKind(r.Slot[active^1].Kind) != lb.TargetNone
}

// Stage writes t into f's inactive slot and returns the new generation.
// Traffic does not see it until Commit. A frontend not yet present is
// created with no active target (its packets pass untouched).
func (d *Dataplane) Stage(f lb.Frontend, t lb.Target) (uint64, error) {
	if err := f.Validate(); err != nil {
		return 0, fmt.Errorf("stage: %w", err)
	}
	if err := t.Validate(); err != nil {
		return 0, fmt.Errorf("stage: %w: %w", ErrBadTarget, err)
	}
	if t.Kind == lb.TargetRedirect && familyOf(t.Addr) != familyOf(f.Addr) {
		return 0, fmt.Errorf("stage %s: target %s is of another address family: %w", f, t, ErrBadTarget)
	}
	if err := d.checkSRv6Target(t); err != nil {
		return 0, fmt.Errorf("stage %s: %w: %w", f, ErrBadTarget, err)
	}
	if err := d.checkFrontend(f); err != nil {
		return 0, fmt.Errorf("stage: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id, err := d.lookupID(f)
	switch {
	case errors.Is(err, ErrNotFound):
		return d.add(f, t)
	case err != nil:
		return 0, fmt.Errorf("stage %s: %w", f, err)
	}
	r := d.record(id)
	staged := (atomic.LoadUint32(&r.Active) & 1) ^ 1
	d.waitFlipped(id)
	r.Generation++
	r.SlotGen[staged] = 0 // a crash while the slot is half written leaves it not staged
	d.slotLeft(r.Slot[staged])
	r.Slot[staged] = d.slotTarget(t, f.Proto)
	r.SlotGen[staged] = r.Generation
	return r.Generation, nil
}

// add stages t for f, a frontend not yet present: a free id's record is
// written whole, then f is inserted into roam_services with that id. d.mu
// is held.
func (d *Dataplane) add(f lb.Frontend, t lb.Target) (uint64, error) {
	id, err := d.freeID()
	if err != nil {
		return 0, fmt.Errorf("stage %s: %w", f, err)
	}
	if err := d.resetCounters(id); err != nil {
		return 0, fmt.Errorf("stage %s: %w", f, err)
	}
	d.waitFreed()
	// Generations of a new frontend start from the clock, so a commit or
	// abort meant for an earlier frontend of the same name (removed or
	// aborted since) can never match one of this one.
	gen := uint64(time.Now().UnixNano()) + 1
	r := d.record(id)
	*r = ServiceValue{Id: id, Generation: gen}
	r.Slot[1] = d.slotTarget(t, f.Proto)
	r.SlotGen[1] = gen
	// No program reads the record before the insert publishes the id (the
	// kernel links the new element with a release).
	key := frontendKey(f)
	if err := d.maps.RoamServices.Update(&key, &id, ebpf.UpdateNoExist); err != nil {
		return 0, fmt.Errorf("stage %s: write service: %w", f, err)
	}
	return gen, nil
}

// Commit makes the target staged with generation gen active for new flows
// (flows already pinned keep their target); gen 0 commits whatever is
// staged. Committing a generation again is a no-op; committing one that was
// aborted, superseded by a later Stage or never staged fails with
// ErrGeneration.
//
// The flip is one atomic store of the record's active index: a program
// copies either the old active slot or the new one, whole. The old slot
// keeps its target until a grace period has passed (it is then the slot
// the next Stage writes).
func (d *Dataplane) Commit(f lb.Frontend, gen uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, err := d.lookupID(f)
	if err != nil {
		return fmt.Errorf("commit %s: %w", f, err)
	}
	r := d.record(id)
	active := atomic.LoadUint32(&r.Active) & 1
	staged := active ^ 1
	switch {
	case gen == 0 && !hasStaged(r, active):
		return fmt.Errorf("commit %s: nothing staged: %w", f, ErrGeneration)
	case gen == 0:
		// Whatever is staged.
	case gen == r.SlotGen[active] && lb.TargetKind(r.Slot[active].Kind) != lb.TargetNone:
		return nil // already committed
	case !hasStaged(r, active) || gen != r.SlotGen[staged]:
		return fmt.Errorf("commit %s: generation %d is not the staged one (staged: %s): %w",
			f, gen, stagedGen(*r), ErrGeneration)
	}
	// A move back home (SRv6 path -> local) must find the previous path
	// held from the switch on: srv6_previous (bpf/srv6.h) reads the hold
	// and the old slot's generation 0, so both are written before the
	// switch, and a failed write fails the commit with nothing switched.
	// Until the switch the hold is harmless: the active target is the SRv6
	// path, and srv6_previous is asked only when it is local. Before the
	// switch nothing reads the active slot's generation (programs read only
	// the other slot's, in srv6_previous).
	from, to := lb.TargetKind(r.Slot[active].Kind), lb.TargetKind(r.Slot[staged].Kind)
	moveHome := from == lb.TargetSRv6 && to == lb.TargetLocal
	if moveHome {
		if err := d.srv6Hold(id); err != nil {
			return fmt.Errorf("commit %s: %w", f, err)
		}
	}
	r.SlotGen[active] = 0 // no longer staged nor active
	atomic.StoreUint32(&r.Active, staged)
	d.flipped[id] = startGrace()
	if commitSwitched != nil {
		commitSwitched(id)
	}
	if !moveHome {
		// Any other commit ends a hold after the switch: until then it
		// could only be one of an earlier move home whose path the staged
		// slot has since overwritten (srv6_previous off: that slot's
		// generation is not 0), and after it the other slot is no SRv6
		// path a local target came from. So a failure here leaves a hold
		// that nothing reads; it is reported all the same.
		if err := d.srv6EndHold(id); err != nil {
			return fmt.Errorf("commit %s: committed, but %w", f, err)
		}
	}
	return nil
}

// commitSwitched, when set (tests only: export_test.go), runs in Commit
// right after the switch of the active slot, before the rest of the commit.
var commitSwitched func(id uint32)

// stagedGen describes the staged generation for an error message.
func stagedGen(svc ServiceValue) string {
	a := svc.Active & 1
	if !hasStaged(&svc, a) {
		return "none, aborted or committed"
	}
	return fmt.Sprint(svc.SlotGen[a^1])
}

// Abort clears f's staged slot if it holds generation gen (0: whatever is
// staged); a frontend that was only staged is removed. Aborting a
// generation again, or a frontend the data plane does not hold, is a no-op;
// aborting a committed generation, or one a later Stage superseded, fails
// with ErrGeneration.
func (d *Dataplane) Abort(f lb.Frontend, gen uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, err := d.lookupID(f)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("abort %s: %w", f, err)
	}
	r := d.record(id)
	active := atomic.LoadUint32(&r.Active) & 1
	staged := active ^ 1
	if gen != 0 {
		switch {
		case gen == r.SlotGen[active] && lb.TargetKind(r.Slot[active].Kind) != lb.TargetNone:
			return fmt.Errorf("abort %s: generation %d is committed: %w", f, gen, ErrGeneration)
		case hasStaged(r, active) && gen != r.SlotGen[staged]:
			return fmt.Errorf("abort %s: generation %d is not the staged one (staged: %d): %w",
				f, gen, r.SlotGen[staged], ErrGeneration)
		case !hasStaged(r, active):
			return nil // aborted already
		}
	}
	if lb.TargetKind(r.Slot[active].Kind) == lb.TargetNone {
		if err := d.deleteFrontend(f); err != nil {
			return fmt.Errorf("abort %s: %w", f, err)
		}
		return nil
	}
	// No program reads the staged slot: the Stage that wrote it came a
	// grace period after the slot was last active.
	r.SlotGen[staged] = 0
	d.slotLeft(r.Slot[staged])
	r.Slot[staged] = TargetValue{}
	return nil
}

// Get returns f's service.
func (d *Dataplane) Get(f lb.Frontend) (lb.Service, error) {
	_, svc, err := d.readService(f)
	if err != nil {
		return lb.Service{}, fmt.Errorf("get %s: %w", f, err)
	}
	return svc.service(f), nil
}

// List returns every frontend's service.
func (d *Dataplane) List() ([]lb.Service, error) {
	var out []lb.Service
	err := iterateMap(d.maps.RoamServices, func(k FrontendKey, id uint32) {
		if id != 0 && id < maxFrontends {
			out = append(out, d.readRecord(id).service(k.Frontend()))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// freeID returns the lowest frontend id not used in the services map (ids
// are recovered from the map, so a restarted agent keeps them).
func (d *Dataplane) freeID() (uint32, error) {
	return lowestFree(d.maps.RoamServices, func(_ FrontendKey, id uint32) uint32 { return id }, "frontend")
}

// lowestFree returns the lowest id, 1 to maxFrontends-1, that no entry of
// m uses (idOf: the id an entry uses); what names the ids in errors.
func lowestFree[K, V any](m *ebpf.Map, idOf func(K, V) uint32, what string) (uint32, error) {
	used := make(map[uint32]bool)
	if err := iterateMap(m, func(k K, v V) { used[idOf(k, v)] = true }); err != nil {
		return 0, fmt.Errorf("find a free %s id: %w", what, err)
	}
	for id := uint32(1); id < maxFrontends; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("all %d %s ids in use", maxFrontends-1, what)
}
