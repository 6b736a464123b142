package dataplane_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/test/netns"
)

// TestSNATPortsReserved: in a namespace whose ephemeral ports (10 of
// them) lie inside the SNAT range, Open with ReservePorts reserves the
// range, so the host's own unbound sockets never get one of its ports
// (here: none is left to get); a range outside the ephemeral one is left
// alone, and one already reserved is not added twice.
func TestSNATPortsReserved(t *testing.T) {
	netns.Enter(t)
	write := func(key, val string) {
		t.Helper()
		if err := os.WriteFile("/proc/sys/"+key, []byte(val), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(key string) string {
		t.Helper()
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	write("net/ipv4/ip_local_port_range", "40000 40009")
	write("net/ipv4/ip_local_reserved_ports", "")

	// A range outside the ephemeral one: nothing reserved.
	dptest.New(t, dataplane.Config{SNATv4: snat4, PortMin: 50000, PortMax: 50999, ReservePorts: true})
	if got := read("net/ipv4/ip_local_reserved_ports"); got != "" {
		t.Fatalf("reserved %q for a range outside the ephemeral ports", got)
	}

	dptest.New(t, dataplane.Config{SNATv4: snat4, PortMin: 40000, PortMax: 40999, ReservePorts: true})
	if got := read("net/ipv4/ip_local_reserved_ports"); got != "40000-40999" {
		t.Fatalf("reserved ports %q, want 40000-40999", got)
	}
	// Opened again (an agent restart): not added twice.
	dptest.New(t, dataplane.Config{SNATv4: snat4, PortMin: 40000, PortMax: 40999, ReservePorts: true})
	if got := read("net/ipv4/ip_local_reserved_ports"); got != "40000-40999" {
		t.Fatalf("reserved ports after a reopen %q", got)
	}
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			if !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("bind an unbound socket: %v", err)
			}
			continue
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		pc.Close()
		if port >= 40000 && port <= 40999 {
			t.Fatalf("the host's unbound socket got port %d, inside the SNAT range", port)
		}
	}
}

// TestSNATPortsReserveFails: when the range overlaps the ephemeral ports
// and cannot be reserved, Open refuses to start, saying why.
func TestSNATPortsReserveFails(t *testing.T) {
	netns.SkipUnlessRoot(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "net/ipv4/ip_local_port_range"), []byte("32768\t60999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory where the sysctl file should be: it cannot be written.
	if err := os.MkdirAll(filepath.Join(dir, "net/ipv4/ip_local_reserved_ports"), 0o755); err != nil {
		t.Fatal(err)
	}
	dataplane.SetProcSys(t, dir)
	_, err := dataplane.Open(dataplane.Config{PinPath: dptest.PinPath(t), SNATv4: snat4, PortMin: 40000, PortMax: 40999, ReservePorts: true})
	if err == nil || !strings.Contains(err.Error(), "overlap the ephemeral ports 32768-60999") {
		t.Fatalf("open with an overlap that cannot be reserved: %v", err)
	}
	// Without the overlap it opens.
	d, err := dataplane.Open(dataplane.Config{PinPath: dptest.PinPath(t), SNATv4: snat4, PortMin: 61000, PortMax: 61999, ReservePorts: true})
	if err != nil {
		t.Fatalf("open outside the ephemeral ports: %v", err)
	}
	d.Close()
}
