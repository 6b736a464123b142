// Package testbed builds roam's test network on one Linux machine: each
// cluster is a network namespace (its node), every cluster is joined to a WAN
// router namespace by a veth link, clients sit in their own namespaces behind
// a cluster's node, and the WAN links can be shaped (tbf) and cut. It starts
// roam-meta on the router and roam-ctrl and roam-agent in each cluster, and
// records everything it creates in a state file so Down (or the next Up after
// a crash) removes it all. Everything is done through netlink; it needs root.
package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Config describes one testbed topology. The YAML form uses the json tags.
type Config struct {
	// Name makes every namespace, pin path and state file of this testbed
	// unique: namespaces are "roam-<name>-<cluster>". Lowercase letters and
	// digits, at most 16.
	Name     string          `json:"name"`
	Clusters []ClusterConfig `json:"clusters"`
	Services []ServiceConfig `json:"services,omitempty"`
	// StateDir holds the state file; default /run/roam.
	StateDir string `json:"state_dir,omitempty"`
	// PinRoot is where each cluster's agent pins its maps; default /sys/fs/bpf.
	PinRoot string `json:"pin_root,omitempty"`
}

// ClusterConfig is one cluster: a node namespace, a tier for placement, its
// WAN link's initial rate and the clients behind it.
type ClusterConfig struct {
	// Name is the cluster id; lowercase letters and digits, at most 10.
	Name string `json:"name"`
	// Tier is deep-edge, edge or cloud.
	Tier   string            `json:"tier"`
	Labels map[string]string `json:"labels,omitempty"`
	// Rate shapes the WAN link from the start ("100mbit", "2mbit",
	// "500kbit"); empty leaves it unshaped.
	Rate string `json:"rate,omitempty"`
	// Clients are namespaces behind this cluster's node (the paper's
	// camera sits behind the deep-edge cluster).
	Clients []string `json:"clients,omitempty"`
}

// ServiceConfig is a service deployed at its home cluster by `testbed run`.
type ServiceConfig struct {
	Name string `json:"name"`
	Home string `json:"home"`
	Port uint16 `json:"port"`
}

// Default is the paper's topology: a deep-edge cluster (home) with the
// streaming client (camera) behind it, an edge cluster and a cloud cluster,
// and the classifier service homed at the deep edge.
func Default() Config {
	return Config{
		Name: "roam",
		Clusters: []ClusterConfig{
			{Name: "home", Tier: "deep-edge", Clients: []string{"camera"}},
			{Name: "edge", Tier: "edge"},
			{Name: "cloud", Tier: "cloud"},
		},
		Services: []ServiceConfig{{Name: "classifier", Home: "home", Port: 80}},
	}
}

// LoadConfig reads a YAML (or JSON) topology; fields left out take the
// defaults of Default where that makes sense.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse config %s: %w", path, err)
	}
	if c.Name == "" {
		c.Name = Default().Name
	}
	return c, c.Validate()
}

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
	clusterRe = regexp.MustCompile(`^[a-z0-9]{1,10}$`)
)

// MaxClusters and MaxClients bound the address plan.
const (
	MaxClusters = 200
	MaxClients  = 200
)

// Validate reports why c cannot be built.
func (c Config) Validate() error {
	if !nameRe.MatchString(c.Name) {
		return fmt.Errorf("config: name %q: want 1-16 lowercase letters or digits", c.Name)
	}
	if len(c.Clusters) == 0 || len(c.Clusters) > MaxClusters {
		return fmt.Errorf("config: want 1 to %d clusters, got %d", MaxClusters, len(c.Clusters))
	}
	seen := map[string]bool{"wan": true}
	clients := 0
	for _, cl := range c.Clusters {
		if !clusterRe.MatchString(cl.Name) {
			return fmt.Errorf("config: cluster %q: want 1-10 lowercase letters or digits", cl.Name)
		}
		if seen[cl.Name] {
			return fmt.Errorf("config: name %q used twice (or reserved)", cl.Name)
		}
		seen[cl.Name] = true
		switch cl.Tier {
		case "deep-edge", "edge", "cloud":
		default:
			return fmt.Errorf("config: cluster %s: tier %q: want deep-edge, edge or cloud", cl.Name, cl.Tier)
		}
		if cl.Rate != "" {
			if _, err := ParseRate(cl.Rate); err != nil {
				return fmt.Errorf("config: cluster %s: %w", cl.Name, err)
			}
		}
		for _, cn := range cl.Clients {
			if !clusterRe.MatchString(cn) {
				return fmt.Errorf("config: client %q: want 1-10 lowercase letters or digits", cn)
			}
			if seen[cn] {
				return fmt.Errorf("config: name %q used twice (or reserved)", cn)
			}
			seen[cn] = true
			clients++
		}
	}
	if clients > MaxClients {
		return fmt.Errorf("config: at most %d clients", MaxClients)
	}
	for _, s := range c.Services {
		if s.Name == "" || s.Port == 0 {
			return fmt.Errorf("config: service %q: name and port required", s.Name)
		}
		if c.cluster(s.Home) < 0 {
			return fmt.Errorf("config: service %s: home cluster %q not defined", s.Name, s.Home)
		}
	}
	return nil
}

func (c Config) cluster(name string) int {
	for i, cl := range c.Clusters {
		if cl.Name == name {
			return i
		}
	}
	return -1
}

// ParseRate reads a rate in bits per second: "100mbit", "2mbit", "500kbit",
// "1gbit", "64000bit" or a plain number of bits per second.
func ParseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := uint64(1)
	for _, u := range []struct {
		suf string
		m   uint64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSuffix(t, u.suf), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("parse rate %q: want e.g. 2mbit, 500kbit, 1gbit", s)
	}
	bps := uint64(v * float64(mult))
	if bps < 8000 {
		return 0, fmt.Errorf("parse rate %q: at least 8kbit", s)
	}
	return bps, nil
}

// FormatRate prints bits per second the way ParseRate reads them.
func FormatRate(bps uint64) string {
	switch {
	case bps >= 1e9 && bps%1e9 == 0:
		return strconv.FormatUint(bps/1e9, 10) + "gbit"
	case bps >= 1e6 && bps%1e6 == 0:
		return strconv.FormatUint(bps/1e6, 10) + "mbit"
	case bps >= 1e3 && bps%1e3 == 0:
		return strconv.FormatUint(bps/1e3, 10) + "kbit"
	}
	return strconv.FormatUint(bps, 10) + "bit"
}

// Address plan (see README.md). Cluster i (1-based, in config order) has the
// WAN subnet 172.16.i.0/24 and fd00:16:i::/64: the router is .1 / ::1, the
// node .2 / ::2. Client j (1-based, over all clusters in order) has the access
// subnet 10.200.j.0/24 and fd00:200:j::/64: the cluster node is .1 / ::1, the
// client .2 / ::2.

// WANRouter4 is the router's address on cluster i's WAN link.
func WANRouter4(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 16, byte(i), 1}) }

// WANNode4 is cluster i's node address on its WAN link: the address its
// frontends and exposed copies use.
func WANNode4(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 16, byte(i), 2}) }

// WANRouter6 and WANNode6 are the IPv6 counterparts.
func WANRouter6(i int) netip.Addr { return v6(0x16, i, 1) }

// WANNode6 is cluster i's node IPv6 address on its WAN link.
func WANNode6(i int) netip.Addr { return v6(0x16, i, 2) }

// AccessNode4 is the node's address on client j's access link.
func AccessNode4(j int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, byte(j), 1}) }

// AccessClient4 is client j's address.
func AccessClient4(j int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, byte(j), 2}) }

// AccessNode6 is the node's IPv6 address on client j's access link.
func AccessNode6(j int) netip.Addr { return v6(0x200, j, 1) }

// AccessClient6 is client j's IPv6 address.
func AccessClient6(j int) netip.Addr { return v6(0x200, j, 2) }

func v6(net, i, host int) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfd, 0x00
	b[2], b[3] = byte(net>>8), byte(net)
	b[4], b[5] = byte(i>>8), byte(i)
	b[15] = byte(host)
	return netip.AddrFrom16(b)
}
