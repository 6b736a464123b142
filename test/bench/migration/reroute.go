package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/testbed"
)

// The data plane's share of a reroute, two layouts side by side in one
// run: a reroute stages the service's frontends (here 2: TCP and UDP on one
// address, as the bench's service has) and then commits them.
//
//   - slots: the data plane as built (roam_service_slots, dataplane.Stage
//     and Commit on a real Dataplane).
//   - grace: the layout before it (commit c81b169): each frontend's record
//     is one element of a BPF hash map, every write links a new element, and
//     no write starts before an RCU grace period has passed since the last
//     one returned (membarrier(MEMBARRIER_CMD_GLOBAL), started in the
//     background as a write returns). Rebuilt here on a hash map of the
//     same shape, with the same reads and writes per Stage and Commit.
//
// Rounds of the two alternate, gap apart (a migration's reroute comes
// seconds after the previous one; both layouts pay for a grace period only
// when writes come closer than that).

// stageCommit is what a reroute costs, one stage and one commit per round
// (µs): the data plane's share here, the agent calls in agentcalls.go.
type stageCommit struct {
	stage, commit []float64
}

// quantiles are the rows' figures: stage and commit p50 and p99, and the
// p50 of each round's stage + commit.
func (f stageCommit) quantiles() (stage50, stage99, commit50, commit99, both50 float64) {
	q := testbed.Quantile
	both := make([]float64, len(f.stage))
	for i := range both {
		both[i] = f.stage[i] + f.commit[i]
	}
	return q(f.stage, 0.5), q(f.stage, 0.99), q(f.commit, 0.5), q(f.commit, 0.99), q(both, 0.5)
}

// graceHash is c81b169's layout: a hash element per frontend, a grace
// period between writes (its dataplane.servicesWrite).
type graceHash struct {
	m     *ebpf.Map
	grace chan struct{}
}

func (g *graceHash) write(fn func() error) error {
	if g.grace != nil {
		<-g.grace
	}
	err := fn()
	done := make(chan struct{})
	g.grace = done
	go func() {
		if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, 1 /* MEMBARRIER_CMD_GLOBAL */, 0, 0); errno != 0 {
			time.Sleep(100 * time.Millisecond)
		}
		close(done)
	}()
	return err
}

func (g *graceHash) stage(k dataplane.FrontendKey, t dataplane.TargetValue) error {
	var v dataplane.ServiceValue
	if err := g.m.Lookup(&k, &v); err != nil {
		return err
	}
	v.Generation++
	s := (v.Active & 1) ^ 1
	v.Slot[s], v.SlotGen[s] = t, v.Generation
	return g.write(func() error { return g.m.Update(&k, &v, ebpf.UpdateAny) })
}

func (g *graceHash) commit(k dataplane.FrontendKey) error {
	var v dataplane.ServiceValue
	if err := g.m.Lookup(&k, &v); err != nil {
		return err
	}
	a := v.Active & 1
	v.Slot[a], v.SlotGen[a] = dataplane.TargetValue{}, 0
	v.Active = a ^ 1
	return g.write(func() error { return g.m.Update(&k, &v, ebpf.UpdateExist) })
}

// benchReroute runs rounds of each layout and returns slots' and grace's figures.
func benchReroute(rounds int, gap time.Duration) (slots, grace stageCommit, err error) {
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("roam-bench-reroute-%d", os.Getpid()))
	d, err := dataplane.Open(dataplane.Config{PinPath: pin, SNATv4: netip.MustParseAddr("192.0.2.1")})
	if err != nil {
		return slots, grace, err
	}
	defer func() {
		d.Close()
		if uerr := dataplane.Unpin(pin); uerr != nil && err == nil {
			err = uerr
		}
	}()
	hm, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_services", Type: ebpf.Hash, KeySize: uint32(sizeOf[dataplane.FrontendKey]()),
		ValueSize: uint32(sizeOf[dataplane.ServiceValue]()), MaxEntries: 4096, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return slots, grace, fmt.Errorf("bench map: %w", err)
	}
	defer hm.Close()
	g := &graceHash{m: hm}

	addr := netip.MustParseAddr("198.18.7.1")
	fes := []lb.Frontend{{Addr: addr, Port: 80, Proto: lb.TCP}, {Addr: addr, Port: 80, Proto: lb.UDP}}
	targets := []lb.Target{
		{Kind: lb.TargetRedirect, Addr: netip.MustParseAddr("198.18.8.1"), Port: 80},
		{Kind: lb.TargetRedirect, Addr: netip.MustParseAddr("198.18.8.2"), Port: 80},
	}
	keys := make([]dataplane.FrontendKey, len(fes))
	for i, f := range fes {
		gen, err := d.Stage(f, targets[0])
		if err != nil {
			return slots, grace, err
		}
		if err := d.Commit(f, gen); err != nil {
			return slots, grace, err
		}
		keys[i] = dataplane.KeyOf(f)
		v := dataplane.ServiceValue{Id: uint32(i + 1)}
		v.Slot[0] = dataplane.TargetOf(targets[0])
		if err := hm.Put(&keys[i], &v); err != nil {
			return slots, grace, err
		}
	}
	for r := range rounds {
		t := targets[(r+1)%2]
		time.Sleep(gap)
		// slots
		start := time.Now()
		gens := make([]uint64, len(fes))
		for i, f := range fes {
			if gens[i], err = d.Stage(f, t); err != nil {
				return slots, grace, err
			}
		}
		mid := time.Now()
		for i, f := range fes {
			if err := d.Commit(f, gens[i]); err != nil {
				return slots, grace, err
			}
		}
		end := time.Now()
		slots.stage = append(slots.stage, us(mid.Sub(start)))
		slots.commit = append(slots.commit, us(end.Sub(mid)))

		time.Sleep(gap)
		// grace
		tv := dataplane.TargetOf(t)
		start = time.Now()
		for i := range keys {
			if err := g.stage(keys[i], tv); err != nil {
				return slots, grace, err
			}
		}
		mid = time.Now()
		for i := range keys {
			if err := g.commit(keys[i]); err != nil {
				return slots, grace, err
			}
		}
		end = time.Now()
		grace.stage = append(grace.stage, us(mid.Sub(start)))
		grace.commit = append(grace.commit, us(end.Sub(mid)))
	}
	if g.grace != nil {
		<-g.grace
	}
	return slots, grace, nil
}

func sizeOf[T any]() uintptr {
	var v T
	return unsafe.Sizeof(v)
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func printReroute(slots, grace stageCommit, rounds int, gap time.Duration) {
	fmt.Printf("\nData plane share of a reroute (2 frontends staged, then committed; %d rounds of each, %s apart, alternating)\n", rounds, gap)
	fmt.Printf("  %-44s %10s %10s %10s %10s %10s\n", "layout", "stage p50", "stage p99", "commit p50", "commit p99", "both p50")
	for _, l := range []struct {
		name string
		f    stageCommit
	}{{"slots (array, active index; as built)", slots}, {"grace (hash element + grace period, c81b169)", grace}} {
		s50, s99, c50, c99, b50 := l.f.quantiles()
		fmt.Printf("  %-44s %8.1fµs %8.1fµs %8.1fµs %8.1fµs %8.1fµs\n", l.name, s50, s99, c50, c99, b50)
	}
}
