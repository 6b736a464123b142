/*
 * icmp.h: ICMP for translated flows: an incoming ICMP error about a flow of
 * ours is translated back through the conntrack (outer addresses, quoted
 * tuple, checksums); a packet too big for its egress is answered with an
 * ICMP "fragmentation needed" / ICMPv6 "packet too big" (as Katran does),
 * one whose TTL or hop limit runs out here with a time exceeded (as a
 * router, within a budget); a SYN's MSS is clamped to its egress MTU.
 */

#include "nat.h"

#ifndef ICMP_H
#define ICMP_H

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


/* csum_sum adds a bpf_csum_diff result (a 32-bit partial sum) to a running one. */
static __always_inline __u32 csum_sum(__u32 acc, __s64 diff)
{
	return csum_add32(acc, (__u32)diff);
}


/* The errors the programs answer with (icmp_error_fill's kind). */
#define ICMP_ERR_TOO_BIG 0	 /* fragmentation needed (IPv4), packet too big (ICMPv6) */
#define ICMP_ERR_TIME_EXCEEDED 1 /* time exceeded in transit (IPv4 type 11, ICMPv6 type 3), code 0 */
#define ICMPV6_TIME_EXCEED 3

/* How much of an expired packet a time exceeded quotes: its IP header and 8 bytes (RFC 792), all a redirected packet is sure to have. */
#define TTL_QUOTE4 28
#define TTL_QUOTE6 48

#define ICMP_QUOTE(kind, v4) ((kind) == ICMP_ERR_TOO_BIG ? ((v4) ? TOO_BIG_QUOTE4 : TOO_BIG_QUOTE6) : ((v4) ? TTL_QUOTE4 : TTL_QUOTE6))
#define ICMP_ADD(v4) ((v4) ? sizeof(struct ip4_hdr) + sizeof(struct icmp_hdr) : sizeof(struct ip6_hdr) + sizeof(struct icmp_hdr))

/*
 * Time exceeded is answered as a router answers it, within a budget: per
 * CPU, ICMP_RATE a second on average, bursts of ICMP_BURST (Linux's
 * icmp_msgs_per_sec and icmp_msgs_burst); beyond, dropped without answer
 * (counted as icmp_limited). Not pinned: each program has its own budget
 * (its own entry: ROAM_PROG_XDP, ROAM_PROG_TC; roam.c).
 * XDP's next-hop lookup writes the next hop's MAC addresses into the frame
 * before the TTL is judged: an expiring packet's own are kept here first.
 */
struct icmp_state {
	__u64 last;   /* bpf_ktime_get_coarse_ns of the last refill */
	__u64 credit; /* ns of credit, one answer costs 1e9 / ICMP_RATE, capped at ICMP_BURST answers */
	__u8 macs[2 * ETH_ALEN_]; /* XDP: the expiring packet's MAC addresses, as in its Ethernet header */
	__u32 pad;
};

ROAM_LOCAL_MAP(roam_icmp_state, BPF_MAP_TYPE_PERCPU_ARRAY, 2, __u32, struct icmp_state, 0); /* ROAM_PROG_XDP, ROAM_PROG_TC */

/*
 * icmp_error_start begins an ICMP error (v4 and quote constant at each
 * call) over a frame resized to hold Ethernet, the new IP and ICMP headers,
 * then the old Ethernet header's place and the quote: the Ethernet header
 * back to the hop the packet came from (MAC addresses swapped), and the
 * ICMP header's type, code and rest, its checksum zero. Returns the ICMP
 * header (the quote follows it), or NULL if the frame is shorter.
 */
static __always_inline struct icmp_hdr *icmp_error_start(void *data, void *data_end, const int v4, const __u32 quote,
							 __u8 type, __u8 code, __be32 rest)
{
	struct eth_hdr *neth = data;
	struct eth_hdr *oeth = data + ICMP_ADD(v4);
	struct icmp_hdr *ic = data + L3_OFF + ICMP_ADD(v4) - sizeof(struct icmp_hdr);
	if ((void *)(ic + 1) + quote > data_end)
		return NULL;
	/* The old Ethernet header overlaps the new IP and ICMP headers: read it first. */
	__builtin_memcpy(neth->dst, oeth->src, ETH_ALEN_);
	__builtin_memcpy(neth->src, oeth->dst, ETH_ALEN_);
	neth->proto = v4 ? bpf_htons(ETH_P_IP_) : bpf_htons(ETH_P_IPV6_);
	ic->type = type;
	ic->code = code;
	ic->check = 0;
	ic->rest = rest;
	return ic;
}

/*
 * icmp_error_fill writes, over a frame resized to hold them
 * (icmp_error_start), the ICMP error of kind about the packet that follows,
 * from the address it was sent to (a frontend or the SNAT address),
 * quoting its start; mtu: a too-big's next-hop MTU. Returns 0, or -1 if
 * the frame is shorter. Shared by both attach points; kind is a constant
 * at each call.
 */
static __always_inline int icmp_error_fill(void *data, void *data_end, int v4, int kind, __u32 mtu)
{
	int big = kind == ICMP_ERR_TOO_BIG;
	if (v4) {
		const __u32 quote = ICMP_QUOTE(kind, 1);
		struct icmp_hdr *ic = icmp_error_start(data, data_end, 1, quote, big ? ICMP_DEST_UNREACH : ICMP_TIME_EXCEEDED,
						       big ? ICMP_FRAG_NEEDED : 0, big ? bpf_htonl(mtu & 0xffff) : 0);
		if (!ic)
			return -1;
		struct ip4_hdr *ip = data + L3_OFF, *orig = (void *)(ic + 1);
		ip->ver_ihl = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*ic) + quote);
		ip->id = 0;
		ip->frag_off = 0;
		ip->ttl = 64;
		ip->protocol = IPPROTO_ICMP_;
		ip->check = 0;
		ip->saddr = orig->daddr;
		ip->daddr = orig->saddr;
		ip->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		ic->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + quote, 0));
		return 0;
	}
	const __u32 quote = ICMP_QUOTE(kind, 0);
	struct icmp_hdr *ic = icmp_error_start(data, data_end, 0, quote, big ? ICMPV6_PKT_TOOBIG : ICMPV6_TIME_EXCEED, 0,
					       big ? bpf_htonl(mtu) : 0);
	if (!ic)
		return -1;
	struct ip6_hdr *ip6 = data + L3_OFF, *orig = (void *)(ic + 1);
	ip6->vtc_flow = bpf_htonl(6 << 28);
	ip6->payload_len = bpf_htons(sizeof(*ic) + quote);
	ip6->nexthdr = IPPROTO_ICMPV6_;
	ip6->hop_limit = 64;
	__builtin_memcpy(ip6->saddr, orig->daddr, 16);
	__builtin_memcpy(ip6->daddr, orig->saddr, 16);
	/* The pseudo-header: addresses, upper-layer length, next header. */
	__be32 tail[2] = {bpf_htonl(sizeof(*ic) + quote), bpf_htonl(IPPROTO_ICMPV6_)};
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)ip6->saddr, 32, 0);
	sum = bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + quote, sum);
	ic->check = csum_fold_neg(sum);
	return 0;
}

/*
 * icmp_error_size: the sizes of the ICMP error of kind about the frame in
 * [data, data_end), len bytes on the wire: whether it is IPv4 (*v4), the
 * bytes the error adds in front (*add) and the length of its quote
 * (*quote). -1 if the frame has no Ethernet header or is shorter than its
 * quote (cannot be: parsed with its L4 header, or over an MTU).
 */
static __always_inline int icmp_error_size(void *data, void *data_end, __u32 len, int kind, int *v4, __u32 *add,
					   __u32 *quote)
{
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	*v4 = eth->proto == bpf_htons(ETH_P_IP_);
	*add = ICMP_ADD(*v4);
	*quote = ICMP_QUOTE(kind, *v4);
	return len < L3_OFF + *quote ? -1 : 0;
}

/*
 * xdp_icmp_error turns the packet into the ICMP error of kind about it, in
 * place, and returns the verdict: XDP_TX back to the hop it came from. An
 * IPv4 packet without DF gets a too-big too: XDP cannot fragment, and the
 * sender's stack lowers its path MTU either way.
 */
static __always_inline int xdp_icmp_error(struct xdp_md *ctx, int kind, __u32 mtu)
{
	__u32 len = ctx->data_end - ctx->data, add, quote;
	int v4;
	if (icmp_error_size((void *)(long)ctx->data, (void *)(long)ctx->data_end, len, kind, &v4, &add, &quote) < 0)
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, -(int)add))
		return XDP_DROP;
	if (bpf_xdp_adjust_tail(ctx, (int)quote - (int)(len - L3_OFF)))
		return XDP_DROP;
	if (icmp_error_fill((void *)(long)ctx->data, (void *)(long)ctx->data_end, v4, kind, mtu) < 0)
		return XDP_DROP;
	return XDP_TX;
}

/*
 * tc_icmp_error turns the packet into the ICMP error of kind about it and
 * returns the verdict: from an ingress hook (a pod's veth, or XDP's pass)
 * out of the interface it came in by; a packet of this host (egress, no
 * ingress interface) into the host's stack by its interface's ingress.
 * A packet the kernel forwarded to an egress hook has the next hop's MAC
 * addresses, not the previous one's: dropped without answer. A
 * CHECKSUM_PARTIAL skb stays so: its receiver (a pod or this host, both
 * over a software path) trusts its checksums.
 */
static __always_inline int tc_icmp_error(struct __sk_buff *skb, int kind, __u32 mtu)
{
	__u32 in = skb->ingress_ifindex, dev = skb->ifindex, add, quote;
	int v4;
	if (icmp_error_size((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, kind, &v4, &add, &quote) < 0 ||
	    (in && in != dev))
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, L3_OFF + quote, 0) || bpf_skb_change_head(skb, add, 0) ||
	    bpf_skb_pull_data(skb, L3_OFF + add + quote))
		return TC_ACT_SHOT;
	if (icmp_error_fill((void *)(long)skb->data, (void *)(long)skb->data_end, v4, kind, mtu) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(dev, in ? 0 : BPF_F_INGRESS);
}

#endif /* ICMP_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef ICMP_PROG_H
#define ICMP_PROG_H

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
		struct nat_value *nv = nat_lookup(k);
		if (!nv)
			return VERDICT_PASS;
		xlate_reverse(x, nv);
		return VERDICT_FLOW;
	}
	/* It quotes frontend -> client: k is the flow's forward key. */
	struct ct_value *cv = ct_lookup(k);
	if (!cv || cv->kind != TARGET_REDIRECT)
		return VERDICT_PASS;
	xlate_redirect(x, cv);
	x->id = cv->frontend_id;
	return VERDICT_FLOW;
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

/* icmp_state: this program's ICMP budget (and XDP's kept MAC addresses). */
static __always_inline struct icmp_state *icmp_state(void)
{
	__u32 prog = ROAM_PROG;
	return bpf_map_lookup_elem(&roam_icmp_state, &prog);
}

#ifdef ROAM_XDP
/*
 * icmp_keep_macs: the packet's TTL or hop limit is 1 or 0, so forwarding it
 * makes a time exceeded: keep its MAC addresses for the answer (XDP: the
 * next-hop lookup overwrites them). Not inlined: rare.
 */
static __noinline int icmp_keep_macs(ROAM_CTX *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct icmp_state *st = icmp_state();
	if (!st || data + 2 * ETH_ALEN_ > data_end)
		return 0;
	__builtin_memcpy(st->macs, data, 2 * ETH_ALEN_);
	return 0;
}

#endif /* ROAM_XDP */

/* ip_ttl_expiring: the packet's TTL or hop limit is 1 or 0 (read only; ip_ttl_dec judges it when it is forwarded). */
static __always_inline int ip_ttl_expiring(ROAM_CTX *ctx, __u8 family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *ttl = data + L3_OFF + (family == FAMILY_V4 ? 8 : 7);
	return (void *)(ttl + 1) <= data_end && *ttl <= 1;
}

/* icmp_allow takes one answer from this CPU's budget: 1 if there was one. */
static __always_inline int icmp_allow(void)
{
	struct icmp_state *b = icmp_state();
	if (!b)
		return 0;
	const __u64 cost = 1000000000ULL / ICMP_RATE, cap = cost * ICMP_BURST;
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 credit = b->credit + (now - b->last);
	if (b->last == 0 || credit > cap)
		credit = cap;
	b->last = now;
	if (credit < cost) {
		b->credit = credit;
		count_reason(REASON_ICMP_LIMITED);
		return 0;
	}
	b->credit = credit - cost;
	return 1;
}
#ifdef ROAM_XDP
#define ROAM_ICMP_ERROR xdp_icmp_error
#else
#define ROAM_ICMP_ERROR tc_icmp_error
#endif

/*
 * icmp_too_big answers a packet too big for its egress (MTU mtu) with a
 * "fragmentation needed" / "packet too big" and returns the verdict. Not
 * inlined: off the per-packet path.
 */
static __noinline int icmp_too_big(ROAM_CTX *ctx, __u32 mtu)
{
	return ROAM_ICMP_ERROR(ctx, ICMP_ERR_TOO_BIG, mtu);
}

/*
 * icmp_time_exceeded answers a packet whose TTL or hop limit ran out here
 * with a time exceeded, within the budget (icmp_allow), and returns the
 * verdict: beyond it, dropped. Not inlined: off the per-packet path.
 */
static __noinline int icmp_time_exceeded(ROAM_CTX *ctx)
{
	if (!icmp_allow())
		return VERDICT_DROP;
#ifdef ROAM_XDP
	/* The frame's MAC addresses are the next hop's now: back to the ones it came with (icmp_keep_macs). */
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct icmp_state *st = icmp_state();
	if (!st || data + 2 * ETH_ALEN_ > data_end)
		return VERDICT_DROP;
	__builtin_memcpy(data, st->macs, 2 * ETH_ALEN_);
#endif
	return ROAM_ICMP_ERROR(ctx, ICMP_ERR_TIME_EXCEEDED, 0);
}

/*
 * ttl_hop takes a hop off the TTL or hop limit of a packet forwarded from
 * here, as a router does: VERDICT_FLOW to go on, else the verdict (its TTL
 * ran out: a time exceeded back, never about an ICMP packet; too short to
 * read: dropped), counted as a drop of x's frontend.
 */
static __always_inline int ttl_hop(ROAM_CTX *ctx, const struct pkt *p, const struct xlate *x)
{
	int t = ip_ttl_dec((void *)(long)ctx->data, (void *)(long)ctx->data_end, p->family);
	if (t == 0)
		return VERDICT_FLOW;
	count_reason(t > 0 ? REASON_TTL_EXCEEDED : REASON_MALFORMED);
	count_action(x->id, ACTION_DROP, p->len);
	/* A router's answer; never an error about an error. */
	if (t > 0 && p->proto != IPPROTO_ICMP_ && p->proto != IPPROTO_ICMPV6_)
		return icmp_time_exceeded(ctx);
	return VERDICT_DROP;
}

/*
 * fib_too_big answers a packet too big for the egress bpf_fib_lookup found
 * (BPF_FIB_LKUP_RET_FRAG_NEEDED, mtu) with an ICMP too-big back to its
 * sender, counted as a drop of x's frontend.
 */
static __always_inline int fib_too_big(ROAM_CTX *ctx, const struct pkt *p, const struct xlate *x, __u32 mtu)
{
	count_reason(REASON_TOO_BIG);
	count_action(x->id, ACTION_DROP, p->len);
	return icmp_too_big(ctx, mtu);
}

/* xlate_apply rewrites the packet as x says (an ICMP error: its outer and quoted headers). */
static __always_inline int xlate_apply(ROAM_CTX *ctx, struct pkt *p, const struct xlate *x)
{
	if (p->proto == IPPROTO_ICMP_ || p->proto == IPPROTO_ICMPV6_)
		return icmp_rewrite(ctx, p, x);
	return rewrite(ctx, p, x->src, x->sport, x->dst, x->dport, x);
}

/*
 * xlate_forward takes a packet on from roam_xmit's next-hop lookup: a hop
 * off its TTL or hop limit if hop (forwarded from here: ttl_hop), counted
 * to x's target, then rewritten as x says. VERDICT_FLOW to go on; else the
 * verdict: ttl_hop's, or malformed if the rewrite fails (counted
 * REASON_MALFORMED).
 */
static __always_inline int xlate_forward(ROAM_CTX *ctx, struct pkt *p, const struct xlate *x, int hop, int malformed)
{
	if (hop) {
		int v = ttl_hop(ctx, p, x);
		if (v != VERDICT_FLOW)
			return v;
	}
	count_target(p, x); /* goes on from here (the rewrite changes p) */
	if (xlate_apply(ctx, p, x) < 0) {
		count_reason(REASON_MALFORMED);
		return malformed;
	}
	return VERDICT_FLOW;
}

#endif /* ICMP_PROG_H */
