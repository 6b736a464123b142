/* tc.c: the tc (tcx, or clsact) entry for packets local pods or the host send to a frontend, and their replies (part of roam.c). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROAM_PROG ROAM_PROG_TC
#define ROAM_CTX struct __sk_buff
#define VERDICT_PASS TC_ACT_UNSPEC /* not roam's, or left as it came: on to the next program (tcx: TCX_NEXT; clsact: the next filter; none: as TC_ACT_OK) */
#define VERDICT_DROP TC_ACT_SHOT
#define ROAM_OWN_SOCKET(ctx) ((ctx)->sk != 0) /* egress: the socket that sent the packet */
#define ROAM_WIRE_LEN(ctx) ((ctx)->len)

#include "parse.h"
#include "csum.h"
#include "counters.h"
#include "fib.h"

#ifndef BPF_F_IPV6
#define BPF_F_IPV6 (1ULL << 7) /* pseudo header of IPv6: keep skb->csum right under CHECKSUM_COMPLETE (6.14+) */
#endif

/*
 * roam_l4_csum: locally generated packets may be CHECKSUM_PARTIAL (the field
 * holds only the pseudo-header sum), so let the kernel apply the change:
 * addresses are pseudo-header fields (BPF_F_PSEUDO_HDR), ports are not;
 * BPF_F_MARK_MANGLED_0 keeps a zero IPv4 UDP checksum zero.
 */
static __always_inline int roam_l4_csum(struct __sk_buff *skb, struct pkt *p, __u32 l4, __u32 diff_l3,
					__u32 diff_ports)
{
	__u32 off = l4 + (p->proto == IPPROTO_TCP_ ? 16 : 6);
	__u64 flags = p->proto == IPPROTO_UDP_ ? BPF_F_MARK_MANGLED_0 : 0;
	__u64 pflags = flags | BPF_F_PSEUDO_HDR;
	if (p->family == FAMILY_V6)
		pflags |= BPF_F_IPV6;
	if (bpf_l4_csum_replace(skb, off, 0, diff_l3, pflags) < 0 &&
	    bpf_l4_csum_replace(skb, off, 0, diff_l3, pflags & ~BPF_F_IPV6) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, off, 0, diff_ports, flags) < 0)
		return -1;
	return 0;
}

#include "icmp.h"

/*
 * roam_xmit sends the packet as x says: next hop by bpf_fib_lookup (before
 * the rewrite), out by bpf_redirect (into a local pod's veth from ingress:
 * bpf_redirect_peer, to the pod's end); without a neighbour, bpf_redirect_neigh
 * resolves it. A packet too big for the egress (only a non-GSO packet
 * larger than the egress MTU can be, which a local socket or pod sends only
 * above its own link's MTU) is answered with an ICMP too-big, one whose
 * TTL or hop limit runs out at an ingress hook with a time exceeded.
 */
static __always_inline int roam_xmit(struct __sk_buff *skb, struct pkt *p, const struct xlate *x, __u64 now)
{
	struct bpf_fib_lookup fib = {};
	fib_params(&fib, p, x->src, x->dst, x->sport, x->dport, skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex,
		   0 /* the kernel judges GSO */);
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return fib_too_big(skb, p, x, fib.mtu_result);
	if (fib_no_route(rc, p, x))
		return VERDICT_DROP;
	/*
	 * A hop at an ingress hook (from a pod, or passed up by XDP without a
	 * neighbour) and forwarded from here. Not a local sender's packet
	 * (ingress_ifindex 0), nor one the kernel forwarded to an egress hook
	 * (it has counted that hop).
	 */
	int hop = skb->ingress_ifindex == skb->ifindex && rc != BPF_FIB_LKUP_RET_NOT_FWDED;
	int v = xlate_forward(skb, p, x, hop, TC_ACT_OK);
	if (v != VERDICT_FLOW)
		return v;
	if (p->proto == IPPROTO_TCP_ && (p->tcp_flags & TCP_FLAG_SYN) && rc != BPF_FIB_LKUP_RET_NOT_FWDED) {
		__u32 mtu = 0;
		bpf_check_mtu(skb, fib.ifindex, &mtu, 0, 0);
		mss_clamp(skb, p, mtu);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_NO_NEIGH);
		count_action(x->id, x->action, p->len);
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
		/*
		 * Not forwardable: the destination is this host (a reply to a
		 * host-originated flow) or has no route. The kernel delivers the
		 * former and drops the latter (counted in its own statistics).
		 */
		count_action(x->id, x->action, p->len);
		return TC_ACT_OK;
	}
	if (set_macs((void *)(long)skb->data, (void *)(long)skb->data_end, &fib) < 0)
		return TC_ACT_SHOT;
	count_action(x->id, x->action, p->len);
	/* Into a local pod: straight to its end's ingress (a veth drops a frame sent to it only by XDP). */
	if (skb->ingress_ifindex && iface_is_pod(fib.ifindex))
		return bpf_redirect_peer(fib.ifindex, 0);
	return bpf_redirect(fib.ifindex, 0);
}

#include "srv6.h"

/* roam_srv6_out: a local sender's packet to a frontend whose active target is an SRv6 path (in scratch, with its id): encapsulate (srv6.h). */
static __always_inline int roam_srv6_out(struct __sk_buff *skb, struct pkt *p)
{
	struct scratch *sc = scratch();
	if (!sc)
		return TC_ACT_SHOT;
	return srv6_encap_skb(skb, p, &sc->t, sc->id);
}

#include "balancer.h"

SEC("tc")
int roam_tc(struct __sk_buff *skb)
{
	/* Locally built packets may carry only part of the headers linear: pull what parsing reads. */
	__u32 need = sizeof(struct eth_hdr) + sizeof(struct ip6_hdr) + sizeof(struct tcp_hdr);
	if (skb->data_end - skb->data < need)
		bpf_skb_pull_data(skb, skb->len < need ? skb->len : need);
	return tc_redirecting(skb, roam_process(skb));
}

/* skb:kfree_skb: count a packet roam_tc redirected that the kernel's redirect code dropped (counters.h). */
SEC("tp_btf/kfree_skb")
int roam_tc_redirect_drop(__u64 *ctx)
{
	/* TP_PROTO(skb, location, reason, rx_sk) */
	count_tc_redirect_drop(ctx[0], ctx[1]);
	return 0;
}
