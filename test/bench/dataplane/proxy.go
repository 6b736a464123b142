package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/test/childproc"
)

// proxyFlag makes the benchmark binary the userspace forwarder: it is
// started again as a child in the home namespace, pinned to the measured
// CPU, so its CPU time can be counted and nothing else of the benchmark
// runs in it.
const proxyFlag = "-proxy"

// proxyRcvBuf is the listening sockets' receive buffer: large enough for
// the generator's window of frames in flight (each takes a page).
const proxyRcvBuf = 64 << 20

// runProxy relays UDP from each listen address to its target, one
// upstream socket per client (what a userspace load balancer does), until
// stdin closes (the benchmark ended or died).
func runProxy(args []string) error {
	var wg sync.WaitGroup
	var conns []*net.UDPConn
	for _, a := range args {
		listen, target, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("proxy: want listen=target, got %q", a)
		}
		l, err := netip.ParseAddrPort(listen)
		if err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		t, err := netip.ParseAddrPort(target)
		if err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(l))
		if err != nil {
			return fmt.Errorf("proxy: listen %s: %w", l, err)
		}
		if err := setRcvBuf(c, proxyRcvBuf); err != nil {
			return err
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			relay(c, net.UDPAddrFromAddrPort(t))
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	return nil
}

func setRcvBuf(c *net.UDPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("proxy: set receive buffer: %w", err)
	}
	return nil
}

func relay(front *net.UDPConn, target *net.UDPAddr) {
	sessions := map[netip.AddrPort]*net.UDPConn{}
	defer func() {
		for _, up := range sessions {
			up.Close()
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, client, err := front.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		up, ok := sessions[client]
		if !ok {
			if up, err = net.DialUDP("udp", nil, target); err != nil {
				continue
			}
			sessions[client] = up
			go func() {
				b := make([]byte, 65536)
				for {
					n, err := up.Read(b)
					if err != nil {
						return
					}
					_, _ = front.WriteToUDPAddrPort(b[:n], client)
				}
			}()
		}
		_, _ = up.Write(buf[:n])
	}
}

// proxyProc is the running userspace forwarder.
type proxyProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startProxy starts the forwarder in ns, pinned to cpu, with one Go
// thread for goroutines (GOMAXPROCS=1): one core, as for every path.
func startProxy(ctx context.Context, ns string, cpu int, relays []string) (*proxyProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	args := append([]string{"netns", "exec", ns, "taskset", "-c", strconv.Itoa(cpu), self, proxyFlag}, relays...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	stdin, stdout, err := childproc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	p := &proxyProc{cmd: cmd, stdin: stdin}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("proxy said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = errors.New("proxy not ready after 10s")
	}
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	return p, nil
}

// runtime is the forwarder's CPU time, all threads.
func (p *proxyProc) runtime() (time.Duration, error) { return processRuntime(p.cmd.Process.Pid) }

func (p *proxyProc) Close() error {
	p.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	return nil
}
