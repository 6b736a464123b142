package dataplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// XDP attach modes accepted by AttachXDP.
const (
	XDPNative  = "native"
	XDPGeneric = "generic"
)

func (d *Dataplane) linkPin(kind, ifname string) string {
	return filepath.Join(d.cfg.PinPath, "links", kind+"-"+ifname)
}

// attachPinned re-uses the link pinned at path, moving it to prog (an atomic
// program swap, no traffic gap), or creates it with attach and pins it.
func attachPinned(path string, ifindex int, prog *ebpf.Program, attach func() (link.Link, error)) error {
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		same := false
		if info, err := l.Info(); err == nil {
			if x := info.XDP(); x != nil {
				same = int(x.Ifindex) == ifindex
			} else if t := info.TCX(); t != nil {
				same = int(t.Ifindex) == ifindex
			}
		}
		if same {
			if err := l.Update(prog); err == nil {
				return l.Close()
			}
		}
		// The interface is gone or was recreated: drop the stale link.
		l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		os.Remove(path)
	}
	l, err := attach()
	if err != nil {
		return err
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s: %w", path, err)
	}
	return l.Close()
}

// AttachXDP attaches the XDP program to ifname (mode "native", "generic" or
// "" for the kernel's choice) and pins the link under PinPath/links. If a
// previous run pinned one, it is updated to this program in place.
func (d *Dataplane) AttachXDP(ifname, mode string) error {
	var flags link.XDPAttachFlags
	switch mode {
	case XDPNative:
		flags = link.XDPDriverMode
	case XDPGeneric:
		flags = link.XDPGenericMode
	case "":
	default:
		return fmt.Errorf("attach xdp to %s: mode %q: want native or generic", ifname, mode)
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", ifname, err)
	}
	prog := d.objs.RoamXdp
	err = attachPinned(d.linkPin("xdp", ifname), iface.Index, prog, func() (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: flags})
	})
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", ifname, err)
	}
	// An older build's program on ifname until now may have pinned IPv4
	// flows where this build does not look (ct4.go).
	if err := d.mergeLegacyFlows(false); err != nil {
		return fmt.Errorf("attach xdp to %s: %w", ifname, err)
	}
	return nil
}

// ifacePod marks a local pod's veth in roam_ifaces (bpf/consts.h IFACE_POD).
const ifacePod = 0x01

// AttachTC attaches the tc program to ifname's ingress (traffic local pods
// send through their veth) and egress (traffic the host sends) with tcx,
// links pinned under PinPath/links, at the head of each chain: roam
// translates its frontends' packets before other tcx programs see them,
// and hands them every other packet untouched (TCX_NEXT). A link pinned by
// a previous run keeps its place. Where tcx is missing it falls back to a
// clsact qdisc with a direct-action filter of roam's own (attachClsact). A veth without roam's XDP
// program is taken for a local pod's: the XDP program then leaves packets
// for it to tc, which hands them to the pod's end (a veth drops a frame
// redirected into it by XDP unless its peer runs XDP or GRO).
func (d *Dataplane) AttachTC(ifname string) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach tc to %s: %w", ifname, err)
	}
	if err := d.markPod(ifname, iface.Index); err != nil {
		return fmt.Errorf("attach tc to %s: %w", ifname, err)
	}
	prog := d.objs.RoamTc
	for _, dir := range []struct {
		name   string
		attach ebpf.AttachType
		parent uint32
	}{
		{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS},
		{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS},
	} {
		err := attachPinned(d.linkPin("tcx-"+dir.name, ifname), iface.Index, prog, func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Program: prog, Interface: iface.Index, Attach: dir.attach, Anchor: link.Head()})
		})
		if errors.Is(err, ebpf.ErrNotSupported) {
			err = attachClsact(iface.Index, dir.parent, prog)
		}
		if err != nil {
			return fmt.Errorf("attach tc %s to %s: %w", dir.name, ifname, err)
		}
	}
	if err := d.mergeLegacyFlows(false); err != nil {
		return fmt.Errorf("attach tc to %s: %w", ifname, err)
	}
	return nil
}

// markPod records in roam_ifaces whether ifname is a local pod's veth: a
// veth roam's XDP program is not attached to.
func (d *Dataplane) markPod(ifname string, ifindex int) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifname, err)
	}
	_, err = os.Stat(d.linkPin("xdp", ifname))
	key := uint32(ifindex)
	if l.Type() != "veth" || err == nil {
		if err := d.maps.RoamIfaces.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unmark %s: %w", ifname, err)
		}
		return nil
	}
	if err := d.maps.RoamIfaces.Put(&key, uint32(ifacePod)); err != nil {
		return fmt.Errorf("mark %s as a pod's veth: %w", ifname, err)
	}
	return nil
}

// roam's clsact filter: its name, and its own priority and handle, so that
// it never takes the place of another's (prio 1 / handle 1 is where most
// tools put theirs). Lower priorities run first: a filter at priority 1
// runs before roam's, which tcx's head anchor avoids.
const (
	clsactFilterName = "roam_tc"
	clsactPriority   = 0x10
	clsactHandle     = 0x726f616d // "roam"
)

// attachClsact attaches prog as roam's direct-action filter under parent
// (ingress or egress) of ifindex's clsact qdisc, adding the qdisc if it
// is missing (one that exists is kept, with its filters). A filter at
// roam's priority and handle that is not roam's is left alone: an error.
func attachClsact(ifindex int, parent uint32, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	nl, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("find interface %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(nl, parent)
	if err != nil {
		return fmt.Errorf("list clsact filters: %w", err)
	}
	for _, f := range filters {
		a := f.Attrs()
		if a.Priority != clsactPriority {
			continue
		}
		if bf, ok := f.(*netlink.BpfFilter); !ok || bf.Name != clsactFilterName {
			return fmt.Errorf("clsact filter at priority %#x (handle %#x, %s) is not roam's: not replaced; remove it or free that priority",
				a.Priority, a.Handle, f.Type())
		}
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: parent, Handle: clsactHandle,
			Protocol: unix.ETH_P_ALL, Priority: clsactPriority,
		},
		Fd: prog.FD(), Name: clsactFilterName, DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("replace clsact filter: %w", err)
	}
	return nil
}

// Detach removes roam's XDP and tc programs from ifname.
func (d *Dataplane) Detach(ifname string) error {
	var errs []error
	for _, kind := range []string{"xdp", "tcx-ingress", "tcx-egress"} {
		path := d.linkPin(kind, ifname)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("load link %s: %w", path, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, l.Close())
	}
	if nl, err := netlink.LinkByName(ifname); err == nil {
		key := uint32(nl.Attrs().Index)
		if err := d.maps.RoamIfaces.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unmark %s: %w", ifname, err))
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(nl, parent)
			if err != nil {
				continue
			}
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == clsactFilterName {
					errs = append(errs, netlink.FilterDel(f))
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach %s: %w", ifname, err)
	}
	return nil
}
