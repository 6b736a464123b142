package dataplane_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestCommitUnderTraffic: the agent's thread, pinned to one CPU, stages
// and commits many frontends back to back while BPF_PROG_TEST_RUN sends new
// flows to all of them from every CPU (that one included). Every flow must
// be pinned to a target of its own frontend that was committed between just
// before its packet and just after it: never another frontend's (a reader
// of an element the kernel freed and reused for another key), never a
// staged-only one, never none (issue 15 item 6). It runs the committed
// build, then a build whose readers spin between finding the frontend's
// element and copying its target (ROAM_TEST_READ_DELAY, bpf/consts.h), so
// that writes land inside every read's window, not once in a million.
//
// Target versions: frontend i's target is 10.i.hi.lo:8080 with version
// hi<<8|lo; odd versions are only ever staged (a later Stage replaces them
// before the commit), even versions are committed.
func TestCommitUnderTraffic(t *testing.T) {
	t.Run("committed build", func(t *testing.T) {
		commitStress(t, openTest(t, dataplane.Config{}), 2*time.Second)
	})
	t.Run("readers held in the window", func(t *testing.T) {
		dataplane.SetSpec(t, buildRoam(t, "-DROAM_TEST_READ_DELAY=20000"))
		commitStress(t, openTest(t, dataplane.Config{}), 2*time.Second)
	})
}

// buildRoam compiles bpf/roam.c with make generate's compiler and flags
// ($BPF_CLANG, $BPF_CFLAGS; make test exports them) plus extra.
func buildRoam(t *testing.T, extra ...string) *ebpf.CollectionSpec {
	t.Helper()
	clang := os.Getenv("BPF_CLANG")
	if clang == "" {
		clang = "clang"
	}
	cflags := os.Getenv("BPF_CFLAGS")
	if cflags == "" {
		cflags = "-O2 -g -Wall -Werror"
		if out, err := exec.Command("gcc", "-print-multiarch").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
			cflags += " -I/usr/include/" + string(bytes.TrimSpace(out))
		}
	}
	obj := filepath.Join(t.TempDir(), "roam.o")
	args := append(strings.Fields(cflags), "-target", "bpfel", "-mcpu=v3", "-I../bpf")
	args = append(append(args, extra...), "-c", "../bpf/roam.c", "-o", obj)
	if out, err := exec.Command(clang, args...).CombinedOutput(); err != nil {
		t.Fatalf("compile bpf/roam.c %v (clang from make deps): %v\n%s", extra, err, out)
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// commitStress runs the writer and the readers on d for about duration
// and checks every flow (TestCommitUnderTraffic).
func commitStress(t *testing.T, d *dataplane.Dataplane, duration time.Duration) {
	const (
		frontends = 64
		round     = 100 * time.Millisecond
		maxVer    = 60000
	)
	cpus := allowedCPUs(t)
	fe := make([]lb.Frontend, frontends)
	tmpl := make([][]byte, frontends)
	committed := make([]atomic.Uint32, frontends)
	target := func(i int, v uint32) lb.Target {
		return lb.Target{Kind: lb.TargetRedirect, Addr: netip.AddrFrom4([4]byte{10, byte(i), byte(v >> 8), byte(v)}), Port: 8080}
	}
	for i := range fe {
		fe[i] = lb.Frontend{Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}), Port: 53, Proto: lb.UDP}
		gen, err := d.Stage(fe[i], target(i, 2))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Commit(fe[i], gen); err != nil {
			t.Fatal(err)
		}
		committed[i].Store(2)
		tmpl[i] = spec{src: netip.MustParseAddrPort("100.64.0.0:1000"), dst: netip.AddrPortFrom(fe[i].Addr, fe[i].Port), proto: lb.UDP,
			srcMAC: macPeer, dstMAC: macD0, zeroUDP: true, payload: []byte("x")}.build(t)
	}

	// The writer: one OS thread on the first CPU, as the agent's updates from one CPU.
	stop := make(chan struct{})
	var writes atomic.Int64
	writerErr := make(chan error, 1)
	go func() {
		writerErr <- func() error {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := onCPU(cpus[0]); err != nil {
				return err
			}
			// Each frontend in turn: commit its staged version, then at
			// once stage the next two (one only ever staged, then the one
			// the next round commits) into the slot the commit has just
			// made inactive. A reader that read the old active index just
			// before the commit still copies from that slot: the stage must
			// not land under it. And with a layout that frees an element
			// per write, the element one write frees is taken by the next
			// write, another frontend's or the same one's.
			gens := make([]uint64, len(fe))
			stage := func(i int, v uint32) error {
				if _, err := d.Stage(fe[i], target(i, v+1)); err != nil {
					return err
				}
				gen, err := d.Stage(fe[i], target(i, v+2))
				gens[i] = gen
				return err
			}
			for i := range fe {
				if err := stage(i, committed[i].Load()); err != nil {
					return err
				}
			}
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				for i := range fe {
					v := committed[i].Load()
					if v+4 > maxVer {
						continue
					}
					if err := d.Commit(fe[i], gens[i]); err != nil {
						return err
					}
					committed[i].Store(v + 2)
					if err := stage(i, v+2); err != nil {
						return err
					}
					writes.Add(3)
				}
			}
		}()
	}()

	// The readers: one per CPU, each sending new flows (a client address of
	// its own per packet) round robin over the frontends.
	type sent struct {
		fe            int
		before, after uint32
	}
	var next atomic.Uint32
	var checked, badFlows, overlapped int
	deadline := time.Now().Add(duration)
	for time.Now().Before(deadline) && badFlows == 0 {
		var mu sync.Mutex
		log := make(map[netip.AddrPort]sent)
		var wg sync.WaitGroup
		errs := make(chan error, len(cpus))
		end := time.Now().Add(round)
		for _, cpu := range cpus {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				if err := onCPU(cpu); err != nil {
					errs <- err
					return
				}
				mine := make(map[netip.AddrPort]sent)
				pkt := make([]byte, len(tmpl[0]))
				for n := 0; time.Now().Before(end); n++ {
					i := n % frontends
					copy(pkt, tmpl[i])
					id := next.Add(1)
					src := netip.AddrFrom4([4]byte{100, 64 | byte(id>>16&0x3f), byte(id >> 8), byte(id)})
					setIPv4Source(pkt, src)
					s := sent{fe: i, before: committed[i].Load()}
					if _, _, err := d.RunXDP(pkt, 0); err != nil {
						errs <- err
						return
					}
					s.after = committed[i].Load()
					mine[netip.AddrPortFrom(src, 1000)] = s
				}
				mu.Lock()
				for k, v := range mine {
					log[k] = v
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		flows, err := d.TakeFlows()
		if err != nil {
			t.Fatal(err)
		}
		for client, s := range log {
			checked++
			if s.after != s.before {
				overlapped++
			}
			if err := checkFlow(flows, client, fe[s.fe], s.fe, s.before, s.after); err != nil {
				badFlows++
				if badFlows <= 10 {
					t.Error(err)
				}
			}
		}
		if next.Load() > 1<<21 {
			break // client addresses would repeat
		}
	}
	close(stop)
	if err := <-writerErr; err != nil {
		t.Fatalf("writer: %v", err)
	}
	if badFlows > 0 {
		t.Fatalf("%d of %d flows pinned wrongly (%d service writes from one CPU)", badFlows, checked, writes.Load())
	}
	if checked < 2000 || writes.Load() < 300 {
		t.Fatalf("too little exercised: %d flows, %d service writes", checked, writes.Load())
	}
	t.Logf("%d flows checked (%d with a commit of their frontend during the packet), %d service writes from one CPU", checked, overlapped, writes.Load())
}

// checkFlow checks client's flow: to frontend f (index i), pinned to a
// committed target of f between versions before and after+2 (a commit that
// had returned but was not yet recorded).
func checkFlow(flows map[netip.AddrPort]dataplane.FlowTarget, client netip.AddrPort, f lb.Frontend, i int, before, after uint32) error {
	got, ok := flows[client]
	if !ok {
		return fmt.Errorf("%s -> %s: no flow (the packet found no target)", client, f)
	}
	if got.Frontend != netip.AddrPortFrom(f.Addr, f.Port) {
		return fmt.Errorf("%s -> %s: flow recorded for %s", client, f, got.Frontend)
	}
	a := got.Target.Addr.As4()
	v := uint32(a[2])<<8 | uint32(a[3])
	switch {
	case got.Target.Kind != lb.TargetRedirect || a[0] != 10:
		return fmt.Errorf("%s -> %s: pinned to %s, not one of its targets", client, f, got.Target)
	case int(a[1]) != i:
		return fmt.Errorf("%s -> %s: pinned to %s, a target of frontend %d", client, f, got.Target, a[1])
	case v%2 == 1:
		return fmt.Errorf("%s -> %s: pinned to %s, a target that was only ever staged", client, f, got.Target)
	case v < before || v > after+2:
		return fmt.Errorf("%s -> %s: pinned to version %d, committed were %d to %d", client, f, v, before, after+2)
	}
	return nil
}

// allowedCPUs lists the CPUs this process may run on.
func allowedCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; c < 1024; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// onCPU keeps the calling (locked) thread on cpu.
func onCPU(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}

// setIPv4Source rewrites an Ethernet+IPv4 frame's source address and its
// header checksum.
func setIPv4Source(frame []byte, src netip.Addr) {
	ip := frame[14:34]
	a := src.As4()
	copy(ip[12:16], a[:])
	setIPv4Checksum(frame)
}

// hop returns a copy of an Ethernet+IP frame as forwarded once: TTL or hop
// limit one less (and the IPv4 header checksum fixed).
func hop(frame []byte) []byte {
	out := append([]byte(nil), frame...)
	if binary.BigEndian.Uint16(out[12:]) == 0x86dd {
		out[14+7]--
		return out
	}
	out[14+8]--
	setIPv4Checksum(out)
	return out
}

// setIPv4Checksum recomputes the header checksum of an Ethernet+IPv4 frame.
func setIPv4Checksum(frame []byte) {
	ip := frame[14 : 14+int(frame[14]&0x0f)*4]
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^dptest.Sum16(ip, 0))
}
