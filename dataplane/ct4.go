package dataplane

// The flow maps by family (bpf/maps.h): IPv4 flows in roam_ct4 and
// roam_nat4 under a 16-byte key, IPv6 flows in roam_conntrack and roam_nat
// under CTKey. The Go side keeps working on CTKey: a flowTable chooses the
// map by the key's family, as the programs' helpers do (bpf/conntrack.h
// ct_lookup). roam_conntrack and roam_nat held both families before: IPv4
// entries an older build left there ("legacy") are moved to the IPv4 maps
// (mergeLegacy).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
)

// CT4Key is the key of roam_ct4 and roam_nat4: one direction of an IPv4
// flow (CTKey's addresses' last 4 bytes, ports, protocol).
type CT4Key = roamCt4Key

// ct4Key narrows an IPv4 key (bpf/conntrack.h ct4_key_of).
func ct4Key(k CTKey) CT4Key {
	return CT4Key{
		Saddr: binary.NativeEndian.Uint32(k.Saddr[12:]), Daddr: binary.NativeEndian.Uint32(k.Daddr[12:]),
		Sport: k.Sport, Dport: k.Dport, Proto: k.Proto,
	}
}

// CTKey is k as a CTKey (IPv4-mapped addresses, family 4).
func (k CT4Key) CTKey() CTKey { return k.wide() }

func (k CT4Key) String() string { return k.wide().String() }

func (k CT4Key) wide() CTKey {
	w := CTKey{Sport: k.Sport, Dport: k.Dport, Proto: k.Proto, Family: familyV4}
	w.Saddr[10], w.Saddr[11], w.Daddr[10], w.Daddr[11] = 0xff, 0xff, 0xff, 0xff
	binary.NativeEndian.PutUint32(w.Saddr[12:], k.Saddr)
	binary.NativeEndian.PutUint32(w.Daddr[12:], k.Daddr)
	return w
}

// Family indices of a flowTable's maps.
const (
	fam4 = 0 // roam_ct4, roam_nat4
	fam6 = 1 // roam_conntrack, roam_nat
)

// famIndex is the index of the map that holds k's flows.
func famIndex(k CTKey) int {
	if k.Family == familyV4 {
		return fam4
	}
	return fam6
}

// flowTable is one kind of flow entry (conntrack or NAT) in its two maps:
// [fam4] keyed by CT4Key, [fam6] by CTKey.
type flowTable [2]*ebpf.Map

func (d *Dataplane) ctTable() flowTable  { return flowTable{d.maps.RoamCt4, d.maps.RoamConntrack} }
func (d *Dataplane) natTable() flowTable { return flowTable{d.maps.RoamNat4, d.maps.RoamNat} }

// key is k as the key of its family's map.
func (t flowTable) key(k CTKey) (*ebpf.Map, any) {
	if famIndex(k) == fam4 {
		k4 := ct4Key(k)
		return t[fam4], &k4
	}
	return t[fam6], &k
}

func (t flowTable) Lookup(k CTKey, v any) error {
	m, mk := t.key(k)
	return m.Lookup(mk, v)
}

func (t flowTable) Delete(k CTKey) error {
	m, mk := t.key(k)
	return m.Delete(mk)
}

func (t flowTable) Update(k CTKey, v any, flags ebpf.MapUpdateFlags) error {
	m, mk := t.key(k)
	return m.Update(mk, v, flags)
}

// walkFlows calls fn for every entry of t, IPv4 then IPv6, as CTKey. An
// IPv4 entry left in the IPv6 map by an older build is skipped: it has been
// copied to the IPv4 map (mergeLegacy) and is no flow of its own.
func walkFlows[V any](t flowTable, fn func(CTKey, V)) error {
	if err := walkMap(t[fam4], func(k CT4Key, v V) { fn(k.wide(), v) }); err != nil {
		return err
	}
	return walkMap(t[fam6], func(k CTKey, v V) {
		if k.Family != familyV4 {
			fn(k, v)
		}
	})
}

// countFlows is how many flows t holds (walkFlows').
func countFlows[V any](t flowTable) (int, error) {
	n := 0
	err := walkFlows(t, func(CTKey, V) { n++ })
	return n, err
}

// seenOf is an entry's last packet (CTValue and NATValue both have one).
func seenOf(v any) uint64 {
	switch v := v.(type) {
	case *CTValue:
		return v.LastSeen
	case *NATValue:
		return v.LastSeen
	}
	return 0
}

// mergeLegacy copies the IPv4 entries found in t's IPv6 map (an older
// build's: it kept both families there) into the IPv4 map: one not there
// is inserted, one there is overwritten only if the old map's copy saw a
// packet more recently (an older program still attached wrote it after
// the last merge). With remove, each is then deleted from the IPv6 map:
// once the programs attached are this build's (GC, which roam-agent starts
// after attaching). It returns how many IPv4 entries it found and how many
// it could not copy (the IPv4 map full: the flow is lost to this build's
// programs; counted).
func mergeLegacy[V any](t flowTable, remove bool) (found, failed int, err error) {
	var keys []CTKey
	var vals []V
	err = walkMap(t[fam6], func(k CTKey, v V) {
		if k.Family == familyV4 {
			keys, vals = append(keys, k), append(vals, v)
		}
	})
	if err != nil {
		return 0, 0, fmt.Errorf("merge old ipv4 flows: %w", err)
	}
	if legacyWalked != nil {
		if err := legacyWalked(); err != nil {
			return len(keys), 0, fmt.Errorf("merge old ipv4 flows: %w", err)
		}
	}
	for i, k := range keys {
		k4 := ct4Key(k)
		var cur V
		switch err := t[fam4].Lookup(&k4, &cur); {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			if err := t[fam4].Update(&k4, &vals[i], ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				failed++ // removed all the same: no program of this build can see it
			}
		case err != nil:
			return len(keys), failed, fmt.Errorf("merge old ipv4 flow %s: %w", k, err)
		case seenOf(&vals[i]) > seenOf(&cur):
			if err := t[fam4].Update(&k4, &vals[i], ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return len(keys), failed, fmt.Errorf("merge old ipv4 flow %s: %w", k, err)
			}
		}
		if remove {
			if err := t[fam6].Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return len(keys), failed, fmt.Errorf("remove old ipv4 flow %s: %w", k, err)
			}
		}
	}
	return len(keys), failed, nil
}

// legacyWalked, when set (tests), runs in mergeLegacy between the walk of
// the IPv6 map and the copies; its error is mergeLegacy's.
var legacyWalked func() error

// mergeLegacyFlows runs mergeLegacy on both kinds of flow entry while an
// older build's IPv4 entries may be left (d.legacy, set at Open), and
// clears d.legacy once a removing pass found none. Forward entries first:
// a NAT entry whose forward entry is not there yet looks orphaned. It
// holds d.mu: mergeLegacy copies what it read before, and a Remove
// between its walk and its copy would delete the flow from both maps,
// then see the stale copy put back (the client kept on the removed
// target until the idle timeout).
func (d *Dataplane) mergeLegacyFlows(remove bool) error {
	if !d.legacy.Load() {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	nct, fct, err := mergeLegacy[CTValue](d.ctTable(), remove)
	if err != nil {
		return err
	}
	nnat, fnat, err := mergeLegacy[NATValue](d.natTable(), remove)
	if err != nil {
		return err
	}
	if !remove {
		return nil
	}
	// Each old entry is counted once: by the pass that removes it.
	found, failed := nct+nnat, fct+fnat
	if found == 0 {
		d.legacy.Store(false)
		return nil
	}
	d.legacyMoved.Add(uint64(found - failed))
	d.legacyFailed.Add(uint64(failed))
	slog.Info("dataplane: moved an older build's IPv4 flows to roam_ct4 and roam_nat4",
		"moved", found-failed, "failed_ipv4_maps_full", failed)
	return nil
}
