// Package lb is roam's load-balancer vocabulary, shared by the data plane,
// the agent API, the controller, the meta-orchestrator's messages and the
// tools: a Frontend (what users hit), a Target (where its traffic goes), a
// Service (a frontend's two target slots as the data plane holds them) and
// their text forms. It imports nothing of roam and nothing of BPF, so a
// package that only speaks about services (roam-meta, the controller's
// records) does not link the data plane. Like Cilium's pkg/loadbalancer.
package lb

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is an L4 protocol a frontend listens on.
type Proto uint8

// IP protocol numbers, as in the packet.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// ParseProto reads "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("parse protocol %q: want tcp or udp", s)
}

// Port is one port a service listens on, the same number at every copy
// and at the home's frontend.
type Port struct {
	Name     string `json:"name,omitempty"`
	Port     uint16 `json:"port"`
	Protocol Proto  `json:"protocol"`
}

// Validate reports why p cannot be served.
func (p Port) Validate() error {
	if p.Port == 0 {
		return fmt.Errorf("port 0")
	}
	if p.Protocol != TCP && p.Protocol != UDP {
		return fmt.Errorf("port %d: protocol must be tcp or udp", p.Port)
	}
	return nil
}

// ValidateWorkload reports why a service listening on ports, each copy
// asking for milliCPU and memoryMB, cannot run: it needs a port, each
// valid, and no negative ask. The controller's backend specs and the
// meta-orchestrator's service descriptors share this check.
func ValidateWorkload(ports []Port, milliCPU, memoryMB int64) error {
	if len(ports) == 0 {
		return errors.New("at least one port")
	}
	for _, p := range ports {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if milliCPU < 0 || memoryMB < 0 {
		return errors.New("negative resources")
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler ("tcp", "udp").
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Proto) UnmarshalText(b []byte) error { return parseText(p, ParseProto, b) }

// parseText sets *dst to parse's reading of b: the body of every
// UnmarshalText here (*dst is left as it was on an error).
func parseText[T any](dst *T, parse func(string) (T, error), b []byte) error {
	v, err := parse(string(b))
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

// Frontend is what users hit at the home cluster: an address, a port and a
// protocol. Its text form is "10.0.0.1:80/tcp" or "[2001:db8::1]:80/udp".
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (f Frontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Proto.String()
}

// Validate reports why f cannot be programmed into the data plane.
func (f Frontend) Validate() error {
	if !f.Addr.IsValid() || f.Addr.IsUnspecified() {
		return fmt.Errorf("frontend %s: address must be set", f)
	}
	if f.Port == 0 {
		return fmt.Errorf("frontend %s: port must be set", f)
	}
	if f.Proto != TCP && f.Proto != UDP {
		return fmt.Errorf("frontend %s: protocol must be tcp or udp", f)
	}
	return nil
}

// ParseFrontend reads the text form of a Frontend.
func ParseFrontend(s string) (Frontend, error) {
	hostport, proto, ok := strings.Cut(s, "/")
	if !ok {
		return Frontend{}, fmt.Errorf("parse frontend %q: want ADDR:PORT/PROTO", s)
	}
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return Frontend{}, fmt.Errorf("parse frontend %q: %w", s, err)
	}
	p, err := ParseProto(proto)
	if err != nil {
		return Frontend{}, fmt.Errorf("parse frontend %q: %w", s, err)
	}
	f := Frontend{Addr: ap.Addr().Unmap(), Port: ap.Port(), Proto: p}
	return f, f.Validate()
}

// MarshalText implements encoding.TextMarshaler (so Frontend works as a JSON
// string and as a map key).
func (f Frontend) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *Frontend) UnmarshalText(b []byte) error { return parseText(f, ParseFrontend, b) }

// TargetKind says what the data plane does with a frontend's packets.
type TargetKind uint8

// Target kinds. The numbers are the BPF programs' (bpf/consts.h enum
// target_kind; dataplane's TestTargetKindsMatchBPF holds the two together).
const (
	TargetNone     TargetKind = 0 // empty slot
	TargetLocal    TargetKind = 1 // pass to the kernel: the service runs here
	TargetRedirect TargetKind = 2 // NAT to an abroad cluster's IP and port
	TargetSRv6     TargetKind = 3 // encapsulate in IPv6 + SRH along a segment list (the client's packet unchanged)
)

func (k TargetKind) String() string {
	switch k {
	case TargetNone:
		return "none"
	case TargetLocal:
		return "local"
	case TargetRedirect:
		return "redirect"
	case TargetSRv6:
		return "srv6"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Target is where a frontend's traffic goes: local, an abroad cluster's
// exposed address and port, or an SRv6 path (the SIDs of the locations in
// the order visited: [abroad] in steady state, [old, new] during a
// migration). Text forms: "local", "redirect:10.2.0.1:8080",
// "redirect:[2001:db8::2]:8080", "srv6:fc00:0:2::1,fc00:0:3::1", "none".
// A Target is comparable (==).
type Target struct {
	Kind TargetKind
	Addr netip.Addr // redirect only
	Port uint16     // redirect only
	// SIDs is the SRv6 segment list (srv6 only): SIDs[0] first, SIDs[1]
	// unset for a one-segment path.
	SIDs [MaxSegments]netip.Addr
}

// MaxSegments is the longest SRv6 path: the old and the new location.
const MaxSegments = 2

// SRv6 builds an SRv6 target through sids (1 or 2), in the order visited.
func SRv6(sids ...netip.Addr) Target {
	t := Target{Kind: TargetSRv6}
	for i, s := range sids {
		if i < MaxSegments {
			t.SIDs[i] = s
		}
	}
	if len(sids) > MaxSegments {
		t.SIDs[0] = netip.Addr{} // invalid: Validate says why
	}
	return t
}

// Segments returns an SRv6 target's segment list, in the order visited.
func (t Target) Segments() []netip.Addr {
	var out []netip.Addr
	for _, s := range t.SIDs {
		if s.IsValid() {
			out = append(out, s)
		}
	}
	return out
}

// Local is the target that passes packets to the local kernel.
var Local = Target{Kind: TargetLocal}

// Redirect builds a redirect target.
func Redirect(ap netip.AddrPort) Target {
	return Target{Kind: TargetRedirect, Addr: ap.Addr().Unmap(), Port: ap.Port()}
}

func (t Target) String() string {
	switch t.Kind {
	case TargetRedirect:
		return "redirect:" + netip.AddrPortFrom(t.Addr, t.Port).String()
	case TargetSRv6:
		segs := make([]string, 0, MaxSegments)
		for _, s := range t.SIDs {
			if s.IsValid() {
				segs = append(segs, s.String())
			}
		}
		return "srv6:" + strings.Join(segs, ",")
	}
	return t.Kind.String()
}

// Validate reports why t cannot be staged.
func (t Target) Validate() error {
	switch t.Kind {
	case TargetLocal:
		return nil
	case TargetRedirect:
		if !t.Addr.IsValid() || t.Addr.IsUnspecified() || t.Port == 0 {
			return fmt.Errorf("target %s: redirect needs an address and a port", t)
		}
		return nil
	case TargetSRv6:
		if !t.SIDs[0].IsValid() {
			return fmt.Errorf("target %s: srv6 needs 1 or %d SIDs", t, MaxSegments)
		}
		for _, s := range t.SIDs {
			if s.IsValid() && (!s.Is6() || s.Is4In6() || s.IsUnspecified() || s.IsMulticast() || s.Zone() != "") {
				return fmt.Errorf("target %s: SID %s is not a unicast IPv6 address", t, s)
			}
		}
		if t.SIDs[0] == t.SIDs[1] {
			return fmt.Errorf("target %s: the same SID twice", t)
		}
		return nil
	}
	return fmt.Errorf("target %s: kind must be local, redirect or srv6", t)
}

// ParseTarget reads the text form of a Target.
func ParseTarget(s string) (Target, error) {
	switch s {
	case "local":
		return Local, nil
	case "none", "":
		return Target{}, nil
	}
	if rest, ok := strings.CutPrefix(s, "srv6:"); ok {
		var sids []netip.Addr
		for _, f := range strings.Split(rest, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return Target{}, fmt.Errorf("parse target %q: %w", s, err)
			}
			sids = append(sids, a)
		}
		if len(sids) > MaxSegments {
			return Target{}, fmt.Errorf("parse target %q: at most %d SIDs", s, MaxSegments)
		}
		t := SRv6(sids...)
		return t, t.Validate()
	}
	rest, ok := strings.CutPrefix(s, "redirect:")
	if !ok {
		return Target{}, fmt.Errorf("parse target %q: want local, redirect:ADDR:PORT or srv6:SID[,SID]", s)
	}
	ap, err := netip.ParseAddrPort(rest)
	if err != nil {
		return Target{}, fmt.Errorf("parse target %q: %w", s, err)
	}
	t := Redirect(ap)
	return t, t.Validate()
}

// MarshalText implements encoding.TextMarshaler.
func (t Target) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Target) UnmarshalText(b []byte) error { return parseText(t, ParseTarget, b) }

// Service is one frontend's entry as the data plane holds it: two target
// slots and the index of the active one. Generation counts stages, so a
// commit can name the stage it commits (two-phase across nodes).
type Service struct {
	Frontend   Frontend `json:"frontend"`
	ID         uint32   `json:"id"`
	Active     Target   `json:"active"`
	Staged     Target   `json:"staged"` // Kind none when nothing is staged
	Generation uint64   `json:"generation"`
}

// String gives one readable line.
func (s Service) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Mode is how a home redirects a migrated service's packets to where it runs.
type Mode string

// Redirect modes.
const (
	ModeNAT  Mode = "nat"  // DNAT to the copy's exposed address and SNAT to the home's (default)
	ModeSRv6 Mode = "srv6" // the client's packet unchanged in IPv6 + SRH to the copy's location
)

// ParseMode reads "nat" or "srv6"; "" is the caller's default (returned as "").
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(s)); m {
	case ModeNAT, ModeSRv6, "":
		return m, nil
	}
	return "", fmt.Errorf("parse redirect mode %q: want nat or srv6", s)
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error { return parseText(m, ParseMode, b) }

// Or returns m, or def when m is unset.
func (m Mode) Or(def Mode) Mode {
	if m == "" {
		return def
	}
	return m
}

// NodeSID is node's SID in a cluster's SRv6 locator: the locator's prefix,
// then the node's number in the next 16 bits, then function ::1 (End with
// roam's behaviour, bpf/srv6.h). The locator must be IPv6 and at most /96.
func NodeSID(locator netip.Prefix, node uint16) (netip.Addr, error) {
	if !locator.IsValid() || !locator.Addr().Is6() || locator.Addr().Is4In6() {
		return netip.Addr{}, fmt.Errorf("node SID: locator %s is not an IPv6 prefix", locator)
	}
	if locator.Bits() > 96 {
		return netip.Addr{}, fmt.Errorf("node SID: locator %s is longer than /96 (16 bits of node, 16 of function)", locator)
	}
	b := locator.Masked().Addr().As16()
	bit := locator.Bits()
	for i := range 16 { // node number, most significant bit first, right after the prefix
		if node&(1<<(15-i)) != 0 {
			b[(bit+i)/8] |= 0x80 >> ((bit + i) % 8)
		}
	}
	b[15] |= 1
	return netip.AddrFrom16(b), nil
}

// ValidateLocator reports why p cannot be a cluster's SRv6 locator.
func ValidateLocator(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() {
		return fmt.Errorf("locator %s: want an IPv6 prefix", p)
	}
	if p.Bits() < 16 || p.Bits() > 96 {
		return fmt.Errorf("locator %s: length must be /16 to /96", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("locator %s: host bits set (want %s)", p, p.Masked())
	}
	return nil
}
