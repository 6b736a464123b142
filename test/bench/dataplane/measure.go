package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sample is one measurement: frames generated and delivered, and the
// wall time from the first frame to the last one delivered.
type sample struct {
	sent, delivered, other uint64
	elapsed                time.Duration // wall time
	cpu                    time.Duration // CPU time of everything on the path (see measure)
}

// pps is the rate one core sustains: packets delivered per second of CPU
// time spent on them.
func (s sample) pps() float64 {
	if s.cpu <= 0 {
		return 0
	}
	return float64(s.delivered) / s.cpu.Seconds()
}

// wallPPS is packets delivered per second of wall time.
func (s sample) wallPPS() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.delivered) / s.elapsed.Seconds()
}

// share is the part of the wall time the path had the CPU: the rest went
// to other work on this shared machine.
func (s sample) share() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return s.cpu.Seconds() / s.elapsed.Seconds()
}

func (s sample) lossPct() float64 {
	if s.sent == 0 {
		return 0
	}
	return 100 * (1 - float64(s.delivered)/float64(s.sent))
}

// pace says how the generator feeds a path.
type pace struct {
	// burst 0: one BPF_PROG_TEST_RUN call sends everything (the kernel
	// paths forward each batch in the softirq that follows it, so the
	// generator cannot outrun them on one CPU). Otherwise the generator
	// sends burst frames, then sleeps until fewer than window
	// frames are on their way (a userspace forwarder's socket would
	// overflow otherwise).
	burst, window uint32
}

// settle is how long the sink count may stand still before the frames
// still missing are taken as lost.
const settle = 500 * time.Millisecond

// pollEvery is how often a waiting generator looks at the sink.
const pollEvery = 20 * time.Microsecond

// cpuClock reads CPU time that is not the generator thread's but belongs
// to the path: ksoftirqd of the CPU (softirq work the kernel deferred) and
// a userspace forwarder's threads.
type cpuClock func() (time.Duration, error)

// measure sends n frames of fl through a path on one CPU: the generator,
// the forwarder (softirq, or a process pinned to the same CPU) and the
// sink all run there, one after the other. The CPU time of all of them
// over the frames delivered is what one core does for the whole path; it
// does not count what other work on this shared machine took from the
// CPU in between, which the wall time does.
func measure(ctx context.Context, g *gen, s *sink, fl flows, n uint32, cpu int, p pace, others cpuClock) (sample, error) {
	if err := g.configure(fl, xdpTx); err != nil {
		return sample{}, err
	}
	good0, other0, err := s.counts()
	if err != nil {
		return sample{}, err
	}
	var out sample
	err = onCPU(g.ns, cpu, func() error {
		ext0, err := others()
		if err != nil {
			return err
		}
		start, cpu0 := time.Now(), threadCPU()
		last, lastAt, lastCPU := uint64(0), start, cpu0
		// wait yields until at most window frames are missing, or the
		// sink stands still for settle.
		wait := func(sent uint64, window uint32) error {
			for {
				good, _, err := s.counts()
				if err != nil {
					return err
				}
				got := good - good0
				now := time.Now()
				if got != last {
					last, lastAt, lastCPU = got, now, threadCPU()
				}
				if got+uint64(window) >= sent || now.Sub(lastAt) > settle {
					return nil
				}
				// Sleep rather than spin: the forwarder gets the CPU,
				// and this thread's CPU time stays the generator's.
				_ = unix.Nanosleep(&unix.Timespec{Nsec: pollEvery.Nanoseconds()}, nil)
			}
		}
		if p.burst == 0 {
			if err := g.sendAll(ctx, fl, n); err != nil {
				return err
			}
		} else {
			for done := uint32(0); done < n; done += p.burst {
				if err := g.send(fl, min(p.burst, n-done)); err != nil {
					return err
				}
				if err := wait(uint64(done+p.burst), p.window); err != nil {
					return err
				}
			}
		}
		sent, err := g.sent()
		if err != nil {
			return err
		}
		if err := wait(sent, 0); err != nil {
			return err
		}
		ext1, err := others()
		if err != nil {
			return err
		}
		out = sample{sent: sent, delivered: last, elapsed: lastAt.Sub(start), cpu: lastCPU - cpu0 + ext1 - ext0}
		return nil
	})
	if err != nil {
		return sample{}, err
	}
	_, other, err := s.counts()
	if err != nil {
		return sample{}, err
	}
	out.other = other - other0
	return out, nil
}

// threadCPU is the calling thread's CPU time (softirqs it ran included:
// this kernel has no IRQ time accounting).
func threadCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// generatorOnly runs the generator n times without sending (XDP_DROP in
// the generator itself): its own ceiling.
func generatorOnly(ctx context.Context, g *gen, fl flows, n uint32, cpu int) (sample, error) {
	if err := g.configure(fl, xdpDrop); err != nil {
		return sample{}, err
	}
	var out sample
	err := onCPU(g.ns, cpu, func() error {
		start, cpu0 := time.Now(), threadCPU()
		if err := g.sendAll(ctx, fl, n); err != nil {
			return err
		}
		out.elapsed, out.cpu = time.Since(start), threadCPU()-cpu0
		var err error
		out.sent, err = g.sent()
		out.delivered = out.sent
		return err
	})
	return out, err
}

// schedRuntime is the CPU time of a task (/proc/<pid>/task/<tid>/schedstat).
func schedRuntime(pid, tid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/schedstat", pid, tid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("parse schedstat of %d: %q", tid, b)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns), err
}

// processRuntime sums the CPU time of every thread of pid.
func processRuntime(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		d, err := schedRuntime(pid, tid)
		if err != nil {
			continue // exited
		}
		sum += d
	}
	return sum, nil
}

// ksoftirqd returns the pid of ksoftirqd/cpu.
func ksoftirqd(cpu int) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	want := fmt.Sprintf("ksoftirqd/%d\n", cpu)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && string(b) == want {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no ksoftirqd/%d", cpu)
}

func (s sample) String() string {
	return fmt.Sprintf("%d/%d frames in %s, cpu %s (%.0f pps, wall %.0f pps, share %.2f, loss %.2f%%)", s.delivered, s.sent,
		s.elapsed.Round(time.Microsecond), s.cpu.Round(time.Microsecond), s.pps(), s.wallPPS(), s.share(), s.lossPct())
}
