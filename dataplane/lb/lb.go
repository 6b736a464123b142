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

// MarshalText implements encoding.TextMarshaler ("tcp", "udp").
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
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
func (f *Frontend) UnmarshalText(b []byte) error {
	v, err := ParseFrontend(string(b))
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// TargetKind says what the data plane does with a frontend's packets.
type TargetKind uint8

// Target kinds. The numbers are the ones the BPF programs use.
const (
	TargetNone     TargetKind = 0 // empty slot
	TargetLocal    TargetKind = 1 // pass to the kernel: the service runs here
	TargetRedirect TargetKind = 2 // NAT to an abroad cluster's IP and port
)

func (k TargetKind) String() string {
	switch k {
	case TargetNone:
		return "none"
	case TargetLocal:
		return "local"
	case TargetRedirect:
		return "redirect"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Target is where a frontend's traffic goes: local, or an abroad cluster's
// exposed address and port. Text forms: "local", "redirect:10.2.0.1:8080",
// "redirect:[2001:db8::2]:8080", "none".
type Target struct {
	Kind TargetKind
	Addr netip.Addr // redirect only
	Port uint16     // redirect only
}

// Local is the target that passes packets to the local kernel.
var Local = Target{Kind: TargetLocal}

// Redirect builds a redirect target.
func Redirect(ap netip.AddrPort) Target {
	return Target{Kind: TargetRedirect, Addr: ap.Addr().Unmap(), Port: ap.Port()}
}

func (t Target) String() string {
	if t.Kind == TargetRedirect {
		return "redirect:" + netip.AddrPortFrom(t.Addr, t.Port).String()
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
	}
	return fmt.Errorf("target %s: kind must be local or redirect", t)
}

// ParseTarget reads the text form of a Target.
func ParseTarget(s string) (Target, error) {
	switch s {
	case "local":
		return Local, nil
	case "none", "":
		return Target{}, nil
	}
	rest, ok := strings.CutPrefix(s, "redirect:")
	if !ok {
		return Target{}, fmt.Errorf("parse target %q: want local or redirect:ADDR:PORT", s)
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
func (t *Target) UnmarshalText(b []byte) error {
	v, err := ParseTarget(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

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
