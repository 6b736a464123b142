package dataplane

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// xdpMD is struct xdp_md, the XDP context given to BPF_PROG_TEST_RUN.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// RunXDP runs the XDP program once on pkt through BPF_PROG_TEST_RUN as if it
// arrived on ifindex (in the calling thread's network namespace; 0 means
// that namespace's loopback). It returns the verdict and the output frame.
func (d *Dataplane) RunXDP(pkt []byte, ifindex int) (uint32, []byte, error) {
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	if ifindex != 0 {
		opts.Context = xdpMD{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)}
	}
	ret, err := d.xdp.RoamXdp.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run xdp program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// RunTC runs the tc program once on pkt through BPF_PROG_TEST_RUN.
func (d *Dataplane) RunTC(pkt []byte) (uint32, []byte, error) {
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := d.tc.RoamTc.Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run tc program: %w", err)
	}
	return ret, opts.DataOut, nil
}

// BenchXDP runs the XDP program repeat times on pkt through
// BPF_PROG_TEST_RUN (ingress: the calling thread's namespace's loopback, so
// the fib lookup uses that namespace's routes) and returns the kernel's mean
// time per packet and the verdict. Give it a packet of an established flow
// to measure the steady state (the first run creates the flow).
func (d *Dataplane) BenchXDP(pkt []byte, repeat int) (time.Duration, uint32, error) {
	if repeat < 1 {
		return 0, 0, fmt.Errorf("bench xdp: repeat %d < 1", repeat)
	}
	ret, per, err := d.xdp.RoamXdp.Benchmark(pkt, repeat, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("bench xdp: %w", err)
	}
	return per, ret, nil
}
