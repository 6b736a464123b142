/* tc.c: the tc (tcx, or clsact) entry for packets local pods or the host send to a frontend, and their replies. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROAM_CTX struct __sk_buff
#define VERDICT_PASS TC_ACT_OK
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

/* roam_xmit: next hop by bpf_fib_lookup, out by bpf_redirect; without a neighbour, bpf_redirect_neigh resolves it. */
static __always_inline int roam_xmit(struct __sk_buff *skb, struct pkt *p, __u32 id, __u32 action, __u64 now)
{
	struct bpf_fib_lookup fib = {};
	fib_params(&fib, p, skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex, 0 /* the kernel judges GSO */);
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_NO_NEIGH);
		count_action(id, action, p->len);
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
		/*
		 * Not forwardable: the destination is this host (a reply to a
		 * host-originated flow) or has no route. The kernel delivers the
		 * former and drops the latter (counted in its own statistics).
		 */
		count_action(id, action, p->len);
		return TC_ACT_OK;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count_reason(REASON_NO_ROUTE);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	if (set_macs((void *)(long)skb->data, (void *)(long)skb->data_end, &fib) < 0)
		return TC_ACT_SHOT;
	count_action(id, action, p->len);
	return bpf_redirect(fib.ifindex, 0);
}

#include "balancer.h"

SEC("tc")
int roam_tc(struct __sk_buff *skb)
{
	/* Locally built packets may carry only part of the headers linear: pull what parsing reads. */
	__u32 need = sizeof(struct eth_hdr) + sizeof(struct ip6_hdr) + sizeof(struct tcp_hdr);
	if (skb->data_end - skb->data < need)
		bpf_skb_pull_data(skb, skb->len < need ? skb->len : need);
	return roam_process(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
