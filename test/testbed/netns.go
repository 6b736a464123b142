package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vishvananda/netns"
)

const netnsDir = "/var/run/netns"

// InNS runs f with the calling goroutine's thread inside the named network
// namespace: sockets f opens belong to that namespace (and stay there after
// f returns), and processes it starts inherit it. It runs on a fresh locked
// thread; if the thread cannot be put back, it is thrown away.
func InNS(name string, f func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return // thread stays locked and dies with the goroutine
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// createNS makes a named network namespace (bind-mounted under
// /var/run/netns) without moving the caller into it.
func createNS(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have switched before failing.
			if serr := netns.Set(orig); serr != nil {
				errc <- fmt.Errorf("create netns %s: %w", name, err)
				return
			}
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// deleteNS removes a named namespace; a missing one is not an error. The
// mount point can be briefly busy while another process (another test's
// `ip netns`) holds a propagated copy of the mount, so it retries.
func deleteNS(name string) error {
	p := filepath.Join(netnsDir, name)
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

// nsExists reports whether the named namespace is mounted.
func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// listNS returns the named namespaces starting with prefix.
func listNS(prefix string) []string {
	ents, err := os.ReadDir(netnsDir)
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

// writeSysctl sets a sysctl under /proc/sys inside namespace ns.
func writeSysctl(ns, key, val string) error {
	return InNS(ns, func() error {
		p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			return fmt.Errorf("set %s=%s in %s: %w", key, val, ns, err)
		}
		return nil
	})
}

// netlinkLinkByName finds a link in the calling thread's namespace.
func netlinkLinkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }
