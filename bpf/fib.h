/* fib.h: bpf_fib_lookup setup for a rewritten packet (next hop and MAC addresses). */
#pragma once

#include "counters.h"

/*
 * fib_params fills a lookup for the packet p as it will leave: from
 * src:sport to dst:dport (the lookup comes before the rewrite, so a packet
 * that cannot go is still as it arrived). tot_len is the length the kernel
 * checks against the egress MTU: XDP passes the IP length; tc passes 0, so
 * the kernel judges the skb itself (is_skb_forwardable): a GSO
 * super-packet from a local socket is segmented after tc and fits.
 */
static __always_inline void fib_params(struct bpf_fib_lookup *fib, const struct pkt *p, const __u8 *src,
				       const __u8 *dst, __be16 sport, __be16 dport, __u32 ifindex, __u16 tot_len)
{
	fib->l4_protocol = p->proto;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len;
	fib->ifindex = ifindex;
	if (p->family == FAMILY_V4) {
		fib->family = AF_INET_;
		__builtin_memcpy(&fib->ipv4_src, src + 12, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst + 12, 4);
	} else {
		fib->family = AF_INET6_;
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
}

/*
 * ip_ttl_dec decrements the TTL (IPv4, with its header checksum, as the
 * kernel's ip_decrease_ttl) or hop limit (IPv6) of a packet about to be
 * forwarded, as a router does. Returns 0; 1 if it has expired (1 or 0: it
 * must not be forwarded), left as it was; -1 if the frame is too short.
 */
static __always_inline int ip_ttl_dec(void *data, void *data_end, __u8 family)
{
	if (family == FAMILY_V4) {
		struct ip4_hdr *iph = data + L3_OFF;
		if ((void *)(iph + 1) > data_end)
			return -1;
		if (iph->ttl <= 1)
			return 1;
		__u32 check = (__u32)iph->check + (__u32)bpf_htons(0x0100);
		iph->check = (__sum16)(check + (check >= 0xffff));
		iph->ttl--;
		return 0;
	}
	struct ip6_hdr *ip6 = data + L3_OFF;
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->hop_limit <= 1)
		return 1;
	ip6->hop_limit--;
	return 0;
}

/* set_macs writes the next hop's MAC addresses; returns -1 if the frame is too short. */
static __always_inline int set_macs(void *data, void *data_end, const struct bpf_fib_lookup *fib)
{
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->dst, fib->dmac, ETH_ALEN_);
	__builtin_memcpy(eth->src, fib->smac, ETH_ALEN_);
	return 0;
}

/*
 * fib_no_route: whether bpf_fib_lookup's rc (not FRAG_NEEDED: fib_too_big)
 * sends the packet nowhere (not success, no neighbour, or not forwarded);
 * if so it is counted as a drop of x's frontend, to be dropped.
 */
static __always_inline int fib_no_route(long rc, const struct pkt *p, const struct xlate *x)
{
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH && rc != BPF_FIB_LKUP_RET_NOT_FWDED) {
		count_reason(REASON_NO_ROUTE);
		count_action(x->id, ACTION_DROP, p->len);
		return 1;
	}
	return 0;
}
