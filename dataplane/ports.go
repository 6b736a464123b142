package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procSys is where the network sysctls are read and written (a variable
// for the tests that inject a failure).
var procSys = "/proc/sys"

const (
	sysctlPortRange     = "net/ipv4/ip_local_port_range"
	sysctlReservedPorts = "net/ipv4/ip_local_reserved_ports"
)

// EphemeralPorts returns the host's ephemeral port range
// (net.ipv4.ip_local_port_range, shared by IPv6) in the calling thread's
// network namespace.
func EphemeralPorts() (lo, hi uint16, err error) {
	b, err := os.ReadFile(filepath.Join(procSys, sysctlPortRange))
	if err != nil {
		return 0, 0, fmt.Errorf("read ephemeral port range: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("read ephemeral port range: %q", b)
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("read ephemeral port range %q: %w", b, err)
	}
	return uint16(l), uint16(h), nil
}

// reservePorts keeps the host's own connections out of the SNAT port
// range. Replies to redirected flows are recognised by their destination
// (a SNAT address and a port of the range) before anything else, so a
// connection of the host from the SNAT address with an ephemeral port in
// the range (the controller's verify dials exactly that) could have its
// packets taken for a flow's. When the range overlaps the ephemeral range,
// it is added to net.ipv4.ip_local_reserved_ports (the kernel then never
// picks those ports for an unbound socket); if that cannot be done, Open
// refuses to start.
func reservePorts(min, max uint16) error {
	lo, hi, err := EphemeralPorts()
	if err != nil {
		return err
	}
	if max < lo || min > hi {
		return nil
	}
	path := filepath.Join(procSys, sysctlReservedPorts)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("SNAT ports %d-%d overlap the ephemeral ports %d-%d (net.ipv4.ip_local_port_range) and cannot be reserved: %w; choose a range outside it", min, max, lo, hi, err)
	}
	cur := strings.TrimSpace(string(b))
	if reservedCovers(cur, min, max) {
		return nil
	}
	want := fmt.Sprintf("%d-%d", min, max)
	if cur != "" {
		want = cur + "," + want
	}
	if err := os.WriteFile(path, []byte(want+"\n"), 0o644); err != nil {
		return fmt.Errorf("SNAT ports %d-%d overlap the ephemeral ports %d-%d (net.ipv4.ip_local_port_range) and cannot be reserved (net.ipv4.ip_local_reserved_ports): %w; choose a range outside it", min, max, lo, hi, err)
	}
	return nil
}

// reservedCovers reports whether a ip_local_reserved_ports list ("a-b,c,...")
// holds every port of min-max.
func reservedCovers(list string, min, max uint16) bool {
	covered := make(map[uint16]bool)
	for _, r := range strings.Split(list, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		a, b, ok := strings.Cut(r, "-")
		if !ok {
			b = a
		}
		x, err1 := strconv.ParseUint(a, 10, 16)
		y, err2 := strconv.ParseUint(b, 10, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		for p := x; p <= y; p++ {
			if p >= uint64(min) && p <= uint64(max) {
				covered[uint16(p)] = true
			}
		}
	}
	return len(covered) == int(max-min)+1
}
