package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
)

func init() {
	register(command{
		name:    "dataplane",
		summary: "dump a node's data plane: frontends, targets, flows, SRv6 paths and copies (dataplane dump [--pin-path P | --agent URL])",
		run:     runDataplane,
	})
}

func runDataplane(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "dump" {
		return errors.New("usage: roamctl dataplane dump [--pin-path /sys/fs/bpf/roam | --agent https://127.0.0.1:9701 --tls-dir DIR]")
	}
	fs := flag.NewFlagSet("dataplane dump", flag.ContinueOnError)
	pin := fs.String("pin-path", dataplane.DefaultPinPath, "bpffs directory where the agent pinned its maps")
	agent := fs.String("agent", "", "read through this agent API URL instead of the pins")
	tlsDir := fs.String("tls-dir", "", "with --agent at https: the cluster controller's identity (ca.crt, tls.crt, tls.key), the only caller an agent accepts")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *agent != "" {
		if *tlsDir == "" {
			return dumpAgent(ctx, os.Stdout, agentapi.New(*agent, ""))
		}
		id, err := pki.Load(*tlsDir)
		if err != nil {
			return err
		}
		return dumpAgent(ctx, os.Stdout, agentapi.NewTLS(*agent, id.ClientConfig(pki.ExpectNodeOf(id.ID().Cluster))))
	}
	return dumpPins(os.Stdout, *pin)
}

// dumpAgent prints what an agent's API reports: services and the number of
// live flows on each of their targets.
func dumpAgent(ctx context.Context, w io.Writer, c *agentapi.Client) error {
	svcs, err := c.List(ctx)
	if err != nil {
		return err
	}
	return printServices(w, svcs, func(s lb.Service, t lb.Target) (int, error) { return c.Flows(ctx, s.Frontend, t) })
}

// printServices writes the frontends' table, sorted, with the live flows
// on each one's active and staged targets (flows counts them).
func printServices(w io.Writer, svcs []lb.Service, flows func(lb.Service, lb.Target) (int, error)) error {
	sortServices(svcs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tID\tACTIVE\tFLOWS\tSTAGED\tFLOWS\tGENERATION")
	for _, s := range svcs {
		counts := [2]string{"-", "-"} // active, staged
		for i, t := range []lb.Target{s.Active, s.Staged} {
			if t.Kind == lb.TargetNone {
				continue
			}
			n, err := flows(s, t)
			if err != nil {
				return err
			}
			counts[i] = fmt.Sprint(n)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\n", s.Frontend, s.ID, s.Active, counts[0], s.Staged, counts[1], s.Generation)
	}
	return tw.Flush()
}

// openPinned opens the maps the agent pinned under pin, in the order
// named, read-only: a dump neither loads programs nor changes anything.
// When one fails, those already opened are closed again.
func openPinned(pin string, names ...string) ([]*ebpf.Map, error) {
	ms := make([]*ebpf.Map, 0, len(names))
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			closeMaps(ms)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func closeMaps(ms []*ebpf.Map) {
	for _, m := range ms {
		m.Close()
	}
}

func sortServices(svcs []lb.Service) {
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Frontend.String() < svcs[j].Frontend.String() })
}

// dumpPins reads the pinned maps directly (read-only: it does not load
// programs or touch the configuration).
func dumpPins(w io.Writer, pin string) error {
	ms, err := openPinned(pin, "roam_services", "roam_service_slots", "roam_conntrack")
	if err != nil {
		return fmt.Errorf("%w (is an agent running with --pin-path %s?)", err, pin)
	}
	defer closeMaps(ms)
	services, slots, conntrack := ms[0], ms[1], ms[2]

	var (
		fk   dataplane.FrontendKey
		id   uint32
		sv   dataplane.ServiceValue
		svcs []lb.Service
	)
	byID := map[uint32]lb.Frontend{}
	it := services.Iterate()
	for it.Next(&fk, &id) {
		if err := slots.Lookup(id, &sv); err != nil {
			return fmt.Errorf("read service %s (id %d): %w", fk.Frontend(), id, err)
		}
		s := sv.Service(fk.Frontend())
		svcs = append(svcs, s)
		byID[s.ID] = s.Frontend
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read services: %w", err)
	}

	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("read monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())

	type flow struct {
		frontend string
		line     string
	}
	var (
		ck    dataplane.CTKey
		cv    dataplane.CTValue
		flows []flow
	)
	fwd := map[uint32]map[lb.Target]int{}
	add := func(ck dataplane.CTKey, cv dataplane.CTValue) {
		f, ok := byID[cv.FrontendId]
		name := f.String()
		if !ok {
			name = fmt.Sprintf("id %d (removed)", cv.FrontendId)
		}
		idle := time.Duration(0)
		if now > cv.LastSeen {
			idle = time.Duration(now - cv.LastSeen)
		}
		flows = append(flows, flow{name, fmt.Sprintf("%s\t%s\t%s\t%s", name, ck, cv, idle.Round(time.Millisecond))})
		if fwd[cv.FrontendId] == nil {
			fwd[cv.FrontendId] = map[lb.Target]int{}
		}
		fwd[cv.FrontendId][cv.Target()]++
	}
	// IPv4 flows in roam_ct4 (an agent from before it kept them in
	// roam_conntrack: then there, and left there until its successor's GC
	// moved them, so not listed twice).
	ct4, err := openPinned(pin, "roam_ct4")
	if err == nil {
		defer closeMaps(ct4)
		var k4 dataplane.CT4Key
		it := ct4[0].Iterate()
		for it.Next(&k4, &cv) {
			add(k4.CTKey(), cv)
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read conntrack: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	cit := conntrack.Iterate()
	for cit.Next(&ck, &cv) {
		if ct4 == nil || ck.Family != 4 {
			add(ck, cv)
		}
	}
	if err := cit.Err(); err != nil {
		return fmt.Errorf("read conntrack: %w", err)
	}

	fmt.Fprintf(w, "pin path %s: %d frontends, %d conntrack entries\n\n", pin, len(svcs), len(flows))
	if err := printServices(w, svcs, func(s lb.Service, t lb.Target) (int, error) { return fwd[s.ID][t], nil }); err != nil {
		return err
	}
	if err := dumpSRv6Pins(w, pin, svcs); err != nil {
		return err
	}
	if len(flows) == 0 {
		return nil
	}
	sort.Slice(flows, func(i, j int) bool { return flows[i].line < flows[j].line })
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FRONTEND\tFLOW (as on the wire)\tENTRY\tIDLE")
	for _, f := range flows {
		fmt.Fprintln(tw, f.line)
	}
	return tw.Flush()
}
