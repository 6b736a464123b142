/*
 * icmp.h: ICMP for translated flows: an incoming ICMP error about a flow of
 * ours is translated back through the conntrack (outer addresses, quoted
 * tuple, checksums); a packet too big for its egress is answered with an
 * ICMP "fragmentation needed" / ICMPv6 "packet too big" (XDP, as Katran
 * does); a SYN's MSS is clamped to its egress MTU.
 */
#pragma once

#include "nat.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_PARAMPROB 4

/* Offsets in an ICMP error: neither header has IPv4 options or IPv6 extension headers. */
#define ICMP4_IN_L3 (L4_OFF4 + (__u32)sizeof(struct icmp_hdr)) /* the quoted IPv4 header */
#define ICMP4_IN_L4 (ICMP4_IN_L3 + (__u32)sizeof(struct ip4_hdr))
#define ICMP6_IN_L3 (L4_OFF6 + (__u32)sizeof(struct icmp_hdr))
#define ICMP6_IN_L4 (ICMP6_IN_L3 + (__u32)sizeof(struct ip6_hdr))

/* How much of an oversize packet a too-big quotes, its IP header included (multiples of 4). */
#define TOO_BIG_QUOTE4 84  /* IPv4 header and 64 bytes (RFC 792 asks for 8) */
#define TOO_BIG_QUOTE6 256 /* well within the 1280 bytes RFC 4443 allows */

/*
 * roam_icmp: p is an ICMP or ICMPv6 packet (its outer header parsed). If it
 * is an error about a packet of a translated flow, fill x with the
 * translation and return VERDICT_FLOW; else VERDICT_PASS (it is the
 * host's). The error goes where the flow's packet came from, as if about
 * that packet: an error about what left the SNAT address for a target goes
 * to the client, quoting client -> frontend, from the frontend's address;
 * one about what left the frontend for a client goes to the target,
 * quoting target -> SNAT address, from the SNAT address. x's addresses
 * become the outer ones; the quoted tuple is (x->dst, x->dport) ->
 * (x->src, x->sport). Not inlined: off the per-packet path.
 */
static __noinline int roam_icmp(ROAM_CTX *ctx, struct pkt *p, struct xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	const struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	struct scratch *sc = scratch();
	if (!cfg || !sc)
		return VERDICT_PASS;
	struct ct_key *k = &sc->ik;
	__be16 *ports;

	if (p->family == FAMILY_V4) {
		struct icmp_hdr *ic = data + L4_OFF4;
		struct ip4_hdr *in = data + ICMP4_IN_L3;
		ports = data + ICMP4_IN_L4;
		if ((void *)(ports + 2) > data_end)
			return VERDICT_PASS;
		if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED && ic->type != ICMP_PARAMETERPROB)
			return VERDICT_PASS;
		if (in->ver_ihl != 0x45 || (in->protocol != IPPROTO_TCP_ && in->protocol != IPPROTO_UDP_) ||
		    (in->frag_off & bpf_htons(IP_OFFSET_)))
			return VERDICT_PASS;
		addr_from_v4(k->saddr, in->daddr);
		addr_from_v4(k->daddr, in->saddr);
		k->proto = in->protocol;
	} else {
		struct icmp_hdr *ic = data + L4_OFF6;
		struct ip6_hdr *in = data + ICMP6_IN_L3;
		ports = data + ICMP6_IN_L4;
		if ((void *)(ports + 2) > data_end)
			return VERDICT_PASS;
		if (ic->type < ICMPV6_DEST_UNREACH || ic->type > ICMPV6_PARAMPROB)
			return VERDICT_PASS;
		if ((bpf_ntohl(in->vtc_flow) >> 28) != 6 || (in->nexthdr != IPPROTO_TCP_ && in->nexthdr != IPPROTO_UDP_))
			return VERDICT_PASS;
		__builtin_memcpy(k->saddr, in->daddr, 16);
		__builtin_memcpy(k->daddr, in->saddr, 16);
		k->proto = in->nexthdr;
	}
	/* k is the quoted packet's tuple turned around: the key of its flow's other direction. */
	k->sport = ports[1];
	k->dport = ports[0];
	k->family = p->family;
	k->pad = 0;
	if (!addr_eq(p->daddr, k->daddr))
		return VERDICT_PASS; /* an error goes to the quoted packet's sender */
	p->inner_proto = k->proto;

	if (snat_owns(cfg, p->family, k->daddr, k->dport)) {
		/* It quotes SNAT address -> target: k is the flow's NAT key. */
		struct nat_value *nv = bpf_map_lookup_elem(&roam_nat, k);
		if (!nv)
			return VERDICT_PASS;
		__builtin_memcpy(x->src, nv->front_addr, 16);
		__builtin_memcpy(x->dst, nv->client_addr, 16);
		x->sport = nv->front_port;
		x->dport = nv->client_port;
		x->id = nv->frontend_id;
		x->action = ACTION_REVERSE;
		return VERDICT_FLOW;
	}
	/* It quotes frontend -> client: k is the flow's forward key. */
	struct ct_value *cv = bpf_map_lookup_elem(&roam_conntrack, k);
	if (!cv || cv->kind != TARGET_REDIRECT)
		return VERDICT_PASS;
	__builtin_memcpy(x->src, cv->snat_addr, 16);
	__builtin_memcpy(x->dst, cv->target_addr, 16);
	x->sport = cv->snat_port;
	x->dport = cv->target_port;
	x->id = cv->frontend_id;
	x->action = ACTION_REDIRECT;
	return VERDICT_FLOW;
}

/* csum_sum adds a bpf_csum_diff result (a 32-bit partial sum) to a running one. */
static __always_inline __u32 csum_sum(__u32 acc, __s64 diff)
{
	return csum_add32(acc, (__u32)diff);
}

/*
 * icmp_rewrite applies roam_icmp's translation x to the error in place:
 * outer addresses, quoted addresses and ports, the quoted IPv4 header's
 * checksum and UDP checksum (TCP's lies beyond the 8 bytes an error must
 * quote), and the ICMP checksum (ICMPv6's covers the outer addresses too).
 * Direct arithmetic at both attach points: an error is never
 * CHECKSUM_PARTIAL. Returns 0, or -1 if the packet is shorter than parsed.
 * Not inlined: off the per-packet path.
 */
static __noinline int icmp_rewrite(ROAM_CTX *ctx, struct pkt *p, const struct xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 new_ports[2] = {x->dport, x->sport}; /* quoted: (dst) -> (src) */
	__u32 d_in, d_ic;
	__be16 *ports;
	__sum16 *ic_check;

	if (p->family == FAMILY_V4) {
		struct ip4_hdr *iph = data + L3_OFF;
		struct icmp_hdr *ic = data + L4_OFF4;
		struct ip4_hdr *in = data + ICMP4_IN_L3;
		ports = data + ICMP4_IN_L4;
		if ((void *)(ports + 4) > data_end)
			return -1;
		__u32 d_out = csum_diff16((__u16 *)&iph->saddr, (const __u16 *)(x->src + 12), 2) +
			      csum_diff16((__u16 *)&iph->daddr, (const __u16 *)(x->dst + 12), 2);
		__builtin_memcpy(&iph->saddr, x->src + 12, 4);
		__builtin_memcpy(&iph->daddr, x->dst + 12, 4);
		iph->check = csum_update(iph->check, d_out);
		d_in = csum_diff16((__u16 *)&in->saddr, (const __u16 *)(x->dst + 12), 2) +
		       csum_diff16((__u16 *)&in->daddr, (const __u16 *)(x->src + 12), 2);
		__builtin_memcpy(&in->saddr, x->dst + 12, 4);
		__builtin_memcpy(&in->daddr, x->src + 12, 4);
		__u16 old_check = in->check;
		in->check = csum_update(old_check, d_in);
		d_ic = csum_add32(d_in, csum_diff16(&old_check, (const __u16 *)&in->check, 1));
		ic_check = &ic->check;
	} else {
		struct ip6_hdr *ip6 = data + L3_OFF;
		struct icmp_hdr *ic = data + L4_OFF6;
		struct ip6_hdr *in = data + ICMP6_IN_L3;
		ports = data + ICMP6_IN_L4;
		if ((void *)(ports + 4) > data_end)
			return -1;
		/* x->src and x->dst lie side by side, as the outer addresses do. */
		__u32 d_out = bpf_csum_diff((__be32 *)ip6->saddr, 32, (__be32 *)x->src, 32, 0);
		__builtin_memcpy(ip6->saddr, x->src, 16);
		__builtin_memcpy(ip6->daddr, x->dst, 16);
		d_in = bpf_csum_diff((__be32 *)in->saddr, 16, (__be32 *)x->dst, 16, 0);
		d_in = bpf_csum_diff((__be32 *)in->daddr, 16, (__be32 *)x->src, 16, d_in);
		__builtin_memcpy(in->saddr, x->dst, 16);
		__builtin_memcpy(in->daddr, x->src, 16);
		d_ic = csum_add32(d_out, d_in); /* the pseudo-header's addresses, and the quoted ones */
		ic_check = &ic->check;
	}
	if ((void *)(ports + 4) > data_end)
		return -1;
	__u32 d_ports = csum_diff16((__u16 *)ports, (const __u16 *)new_ports, 2);
	ports[0] = x->dport;
	ports[1] = x->sport;
	d_ic = csum_add32(d_ic, d_ports);
	if (p->inner_proto == IPPROTO_UDP_ && ports[3] != 0) {
		__u16 old = ports[3];
		__u16 c = csum_update(old, csum_add32(d_in, d_ports));
		if (c == 0)
			c = 0xffff;
		ports[3] = c;
		d_ic = csum_add32(d_ic, csum_diff16(&old, &c, 1));
	}
	*ic_check = csum_update(*ic_check, d_ic);
	return 0;
}

/*
 * mss_clamp lowers the MSS option of a SYN about to leave through a device
 * of MTU mtu to what that device carries, so the peer never sends this way
 * a segment the hop cannot take. Only an MSS in the first option slot, where
 * every common stack puts it, is read.
 */
static __always_inline void mss_clamp(ROAM_CTX *ctx, struct pkt *p, __u32 mtu)
{
	__u32 hdrs = p->family == FAMILY_V4 ? 40 : 60;
	if (mtu < 576 || mtu > 65535)
		return;
	__u32 l4 = p->family == FAMILY_V4 ? L4_OFF4 : L4_OFF6;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcp_hdr *th = data + l4;
	__u8 *opt = data + l4 + sizeof(*th);
	if ((void *)(opt + 4) > data_end)
		return;
	if ((th->doff_res >> 4) < 6 || opt[0] != 2 || opt[1] != 4)
		return;
	__u16 old = *(__u16 *)(opt + 2);
	if (bpf_ntohs(old) <= mtu - hdrs)
		return;
	__u16 mss = bpf_htons(mtu - hdrs);
	*(__u16 *)(opt + 2) = mss;
	roam_l4_csum(ctx, p, l4, 0, csum_diff16(&old, &mss, 1));
}

#ifdef ROAM_XDP
/*
 * xdp_too_big turns a packet too big for its egress (MTU mtu) into the
 * ICMP error that tells its sender, in place, and returns the verdict:
 * XDP_TX back to the hop it came from, from the address it was sent to
 * (a frontend or the SNAT address), quoting its start. An IPv4 packet
 * without DF gets it too: XDP cannot fragment, and the sender's stack
 * lowers its path MTU either way. XDP only (xdp.c). Not inlined: off the
 * per-packet path.
 */
static __noinline int xdp_too_big(struct xdp_md *ctx, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	int v4 = eth->proto == bpf_htons(ETH_P_IP_);
	__u32 add = v4 ? sizeof(struct ip4_hdr) + sizeof(struct icmp_hdr) : sizeof(struct ip6_hdr) + sizeof(struct icmp_hdr);
	__u32 quote = v4 ? TOO_BIG_QUOTE4 : TOO_BIG_QUOTE6;
	__u32 len = data_end - data;
	if (len < L3_OFF + quote)
		return XDP_DROP; /* cannot be: it is over an MTU */
	if (bpf_xdp_adjust_head(ctx, -(int)add))
		return XDP_DROP;
	if (bpf_xdp_adjust_tail(ctx, (int)quote - (int)(len - L3_OFF)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *neth = data;
	if (v4) {
		struct eth_hdr *oeth = data + sizeof(struct ip4_hdr) + sizeof(struct icmp_hdr);
		struct ip4_hdr *ip = data + L3_OFF;
		struct icmp_hdr *ic = data + L4_OFF4;
		struct ip4_hdr *orig = data + ICMP4_IN_L3;
		if ((void *)orig + TOO_BIG_QUOTE4 > data_end)
			return XDP_DROP;
		/* The old Ethernet header overlaps the new IP header: read it first. */
		__builtin_memcpy(neth->dst, oeth->src, ETH_ALEN_);
		__builtin_memcpy(neth->src, oeth->dst, ETH_ALEN_);
		neth->proto = bpf_htons(ETH_P_IP_);
		ip->ver_ihl = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*ic) + TOO_BIG_QUOTE4);
		ip->id = 0;
		ip->frag_off = 0;
		ip->ttl = 64;
		ip->protocol = IPPROTO_ICMP_;
		ip->check = 0;
		ip->saddr = orig->daddr;
		ip->daddr = orig->saddr;
		ip->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		ic->type = ICMP_DEST_UNREACH;
		ic->code = ICMP_FRAG_NEEDED;
		ic->check = 0;
		ic->rest = bpf_htonl(mtu & 0xffff);
		ic->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + TOO_BIG_QUOTE4, 0));
		return XDP_TX;
	}
	struct eth_hdr *oeth = data + sizeof(struct ip6_hdr) + sizeof(struct icmp_hdr);
	struct ip6_hdr *ip6 = data + L3_OFF;
	struct icmp_hdr *ic = data + L4_OFF6;
	struct ip6_hdr *orig = data + ICMP6_IN_L3;
	if ((void *)orig + TOO_BIG_QUOTE6 > data_end)
		return XDP_DROP;
	__builtin_memcpy(neth->dst, oeth->src, ETH_ALEN_);
	__builtin_memcpy(neth->src, oeth->dst, ETH_ALEN_);
	neth->proto = bpf_htons(ETH_P_IPV6_);
	ip6->vtc_flow = bpf_htonl(6 << 28);
	ip6->payload_len = bpf_htons(sizeof(*ic) + TOO_BIG_QUOTE6);
	ip6->nexthdr = IPPROTO_ICMPV6_;
	ip6->hop_limit = 64;
	__builtin_memcpy(ip6->saddr, orig->daddr, 16);
	__builtin_memcpy(ip6->daddr, orig->saddr, 16);
	ic->type = ICMPV6_PKT_TOOBIG;
	ic->code = 0;
	ic->check = 0;
	ic->rest = bpf_htonl(mtu);
	/* The pseudo-header: addresses, upper-layer length, next header. */
	__be32 tail[2] = {bpf_htonl(sizeof(*ic) + TOO_BIG_QUOTE6), bpf_htonl(IPPROTO_ICMPV6_)};
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)ip6->saddr, 32, 0);
	sum = bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + TOO_BIG_QUOTE6, sum);
	ic->check = csum_fold_neg(sum);
	return XDP_TX;
}
#endif /* ROAM_XDP */

/* xlate_apply rewrites the packet as x says (an ICMP error: its outer and quoted headers). */
static __always_inline int xlate_apply(ROAM_CTX *ctx, struct pkt *p, const struct xlate *x)
{
	if (p->proto == IPPROTO_ICMP_ || p->proto == IPPROTO_ICMPV6_)
		return icmp_rewrite(ctx, p, x);
	return rewrite(ctx, p, x->src, x->sport, x->dst, x->dport, x);
}
