// Package netns is the network-namespace support that roam's tests,
// benchmarks and testbed share: running code and processes inside a named
// namespace, creating and deleting namespaces, veth pairs whose ends behave
// like a wire (full checksums, XDP_PASS where frames are redirected in), and
// the client-home-abroad topology the data plane's end-to-end test and
// benchmark run on. Everything here needs root. No daemon imports it.
//
// One thread rule holds throughout (as cilium/ebpf's testutils): a thread
// that enters another namespace is locked to its goroutine, and it is
// unlocked only once it is back in its original namespace; if it cannot be
// put back it stays locked and dies with its goroutine, never reused.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted (as by ip netns).
const Dir = "/var/run/netns"

// onFreshThread runs f on a new locked OS thread and restores that thread's
// namespace afterwards (the thread rule above): the caller's thread never
// moves.
func onFreshThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return // the thread stays locked and dies with the goroutine
		}
		defer orig.Close()
		ferr := f()
		if err := vnetns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Do runs f on a thread inside the named namespace: sockets f opens belong
// to that namespace (and stay there after f returns), processes it starts
// inherit it, and BPF_PROG_TEST_RUN's fib lookups see its routes.
func Do(name string, f func() error) error {
	ns, err := vnetns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	return onFreshThread(func() error {
		if err := vnetns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return f()
	})
}

// In runs f inside the named namespace, as Do, and returns what f opened
// there (a socket keeps the namespace it was created in).
func In[T any](name string, f func() (T, error)) (T, error) {
	var v T
	err := Do(name, func() (err error) {
		v, err = f()
		return err
	})
	return v, err
}

// Create makes a named namespace with its loopback up, without moving the
// caller into it.
func Create(name string) error {
	err := onFreshThread(func() error {
		ns, err := vnetns.NewNamed(name) // switches this thread
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return ns.Close()
	})
	if err != nil {
		return err
	}
	return Handle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo in %s: %w", name, err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in %s: %w", name, err)
		}
		return nil
	})
}

// Delete removes a named namespace (and with it its interfaces); a missing
// one is not an error. The mount point can be briefly busy while another
// process (another test's `ip netns`) holds a propagated copy of the mount,
// so it retries for a while.
func Delete(name string) error {
	p := filepath.Join(Dir, name)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete netns %s: unmount: %w", name, err)
		}
		err := os.Remove(p)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("delete netns %s: %w", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Exists reports whether the named namespace is mounted.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(Dir, name))
	return err == nil
}

// List returns the named namespaces whose names start with prefix.
func List(prefix string) []string {
	ents, err := os.ReadDir(Dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Handle runs f with a netlink handle bound to the named namespace ("" is
// the calling thread's).
func Handle(name string, f func(h *netlink.Handle) error) error {
	ns, err := nsHandle(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	defer h.Close()
	return f(h)
}

// Sysctl sets key (dotted, as sysctl(8) names it) to val inside the named
// namespace.
func Sysctl(name, key, val string) error {
	return Do(name, func() error {
		p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			return fmt.Errorf("set %s=%s in %s: %w", key, val, name, err)
		}
		return nil
	})
}

// Listen opens a listener inside the named namespace.
func Listen(name, network, addr string) (net.Listener, error) {
	return In(name, func() (net.Listener, error) { return net.Listen(network, addr) })
}

// ListenPacket opens a packet socket inside the named namespace.
func ListenPacket(name, network, addr string) (net.PacketConn, error) {
	return In(name, func() (net.PacketConn, error) { return net.ListenPacket(network, addr) })
}

// Dial opens a connection from inside the named namespace.
func Dial(ctx context.Context, name, network, addr string) (net.Conn, error) {
	return In(name, func() (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, network, addr) })
}

// Dialer returns a DialContext (for an http.Transport) that opens its
// connections in the named namespace.
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return Dial(ctx, name, network, addr)
	}
}

// Cmd builds a command run inside the named namespace with ip netns exec.
func Cmd(ctx context.Context, name, prog string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", name, prog}, args...)...)
}

// RandSuffix returns n random bytes in hex, for names unique on a shared
// machine.
func RandSuffix(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
