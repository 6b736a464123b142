package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// srv6StatMax is bpf/srv6.h SRV6_STAT_MAX: counters per id in roam_srv6_stats.
const srv6StatMax = 5

// dumpSRv6Pins prints the SRv6 path mode's state from the pins: the node's
// SID, each SRv6 frontend's path and counters (home), and each copy at this
// node with its state and counters (location). Nothing when SRv6 is off.
func dumpSRv6Pins(w io.Writer, pin string, svcs []lb.Service) error {
	ms, err := openPinned(pin, "roam_srv6_config")
	if errors.Is(err, os.ErrNotExist) {
		return nil // an older agent
	}
	if err != nil {
		return err
	}
	defer closeMaps(ms)
	cfgMap := ms[0]
	var cfg dataplane.SRv6ConfigValue
	if err := cfgMap.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read srv6 config: %w", err)
	}
	if cfg.HasSid == 0 {
		return nil
	}
	ls, err := openPinned(pin, "roam_srv6_local", "roam_srv6_stats")
	if err != nil {
		return err
	}
	defer closeMaps(ls)
	local, stats := ls[0], ls[1]
	counter := func(id, stat uint32) (uint64, error) {
		var per []dataplane.Counter
		if err := stats.Lookup(id*srv6StatMax+stat, &per); err != nil {
			return 0, fmt.Errorf("read srv6 counter: %w", err)
		}
		var n uint64
		for _, c := range per {
			n += c.Packets
		}
		return n, nil
	}

	fmt.Fprintf(w, "\nsrv6: SID %s, MSS clamp %d (IPv4) %d (IPv6)\n", netip.AddrFrom16(cfg.Sid), cfg.Mss4, cfg.Mss6)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOME FRONTEND\tACTIVE PATH\tSTAGED PATH\tENCAP\tDECAP")
	for _, s := range svcs {
		if s.Active.Kind != lb.TargetSRv6 && s.Staged.Kind != lb.TargetSRv6 {
			continue
		}
		enc, err := counter(s.ID, 0)
		if err != nil {
			return err
		}
		dec, err := counter(s.ID, 3)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", s.Frontend, s.Active, s.Staged, enc, dec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	type cp struct {
		f                lb.Frontend
		state            dataplane.SRv6State
		deliver, forward uint64
	}
	var (
		k   dataplane.FrontendKey
		v   dataplane.SRv6LocalValue
		cps []cp
	)
	it := local.Iterate()
	for it.Next(&k, &v) {
		c := cp{f: k.Frontend(), state: dataplane.SRv6State(v.State)}
		if c.deliver, err = counter(v.Id, 1); err != nil {
			return err
		}
		if c.forward, err = counter(v.Id, 2); err != nil {
			return err
		}
		cps = append(cps, c)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read srv6 copies: %w", err)
	}
	sort.Slice(cps, func(i, j int) bool { return cps[i].f.String() < cps[j].f.String() })
	fw, err := counter(0, 2)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\ncopies here (this node as a location; forwarded with no copy: %d)\n", fw)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tSTATE\tDELIVERED\tFORWARDED")
	for _, c := range cps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", c.f, c.state, c.deliver, c.forward)
	}
	return tw.Flush()
}
