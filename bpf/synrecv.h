/*
 * synrecv.h: a target's stale SYN_RECV: answered with an RST (XDP). A SYN
 * flood's flow, evicted from its SNAT port (nat.h), can leave the target
 * holding a request socket for that port; a real client's SYN given the
 * port then meets it, and the target answers with a bare ACK for the old
 * flow. Forwarded, that ACK makes the client reset the flow and start
 * again on another port (which may hold another): seconds. Instead, the
 * XDP program turns the ACK into the RST that clears the request socket
 * (its sequence number is the ACK's acknowledgment number, so the target
 * takes it) and sends it back to the target; the client's SYN
 * retransmission then finds the port clean.
 */
#pragma once

#include "csum.h"
#include "counters.h"

#ifdef ROAM_XDP
/*
 * xdp_stale_reset turns the target's TCP packet (no IP options or IPv6
 * extension headers: the parser passed it) into an RST from its
 * destination back to its source, with sequence number its
 * acknowledgment number, no options or payload, and returns XDP_TX. Not
 * inlined: off the per-packet path.
 */
static __noinline int xdp_stale_reset(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	int v4 = eth->proto == bpf_htons(ETH_P_IP_);
	__u32 l4 = v4 ? L4_OFF4 : L4_OFF6;
	int len = data_end - data;
	if (len < (int)(l4 + sizeof(struct tcp_hdr)))
		return XDP_DROP;
	if (len > (int)(l4 + sizeof(struct tcp_hdr)) && bpf_xdp_adjust_tail(ctx, (int)(l4 + sizeof(struct tcp_hdr)) - len))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	struct tcp_hdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	__u8 mac[ETH_ALEN_];
	__builtin_memcpy(mac, eth->dst, ETH_ALEN_);
	__builtin_memcpy(eth->dst, eth->src, ETH_ALEN_);
	__builtin_memcpy(eth->src, mac, ETH_ALEN_);
	__be16 port = th->source;
	th->source = th->dest;
	th->dest = port;
	th->seq = th->ack_seq;
	th->ack_seq = 0;
	th->doff_res = 5 << 4;
	th->flags = TCP_FLAG_RST;
	th->window = 0;
	th->urg_ptr = 0;
	th->check = 0;
	__u32 sum;
	if (v4) {
		struct ip4_hdr *ip = data + L3_OFF;
		__be32 a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*th));
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->ttl = 64;
		ip->check = 0;
		ip->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		__be32 tail = bpf_htonl((IPPROTO_TCP_ << 16) | sizeof(*th)); /* zero, protocol, TCP length */
		sum = bpf_csum_diff(0, 0, (__be32 *)&ip->saddr, 8, 0);
		sum = bpf_csum_diff(0, 0, &tail, sizeof(tail), sum);
	} else {
		struct ip6_hdr *ip6 = data + L3_OFF;
		__u8 a[16];
		__builtin_memcpy(a, ip6->saddr, 16);
		__builtin_memcpy(ip6->saddr, ip6->daddr, 16);
		__builtin_memcpy(ip6->daddr, a, 16);
		ip6->payload_len = bpf_htons(sizeof(*th));
		ip6->hop_limit = 64;
		__be32 tail[2] = {bpf_htonl(sizeof(*th)), bpf_htonl(IPPROTO_TCP_)};
		sum = bpf_csum_diff(0, 0, (__be32 *)ip6->saddr, 32, 0);
		sum = bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
	}
	sum = bpf_csum_diff(0, 0, (__be32 *)th, sizeof(*th), sum);
	th->check = csum_fold_neg(sum);
	return XDP_TX;
}
#define ROAM_STALE_ANSWERED 1
#define ROAM_STALE_RESET(ctx) xdp_stale_reset(ctx)
#else
#define ROAM_STALE_ANSWERED 0 /* tc: forwarded as any reply; the client resets the flow */
#define ROAM_STALE_RESET(ctx) VERDICT_DROP
#endif

/*
 * stale_synrecv: p is a target's reply matching nv, a TCP flow whose
 * target has not sent its SYN-ACK yet (NAT_SYN_WAIT). A SYN-ACK ends the
 * wait; an RST passes; anything else (a bare ACK) comes from a request
 * socket of an older flow on the port: 1, answer it (ROAM_STALE_RESET).
 */
static __always_inline int stale_synrecv(struct nat_value *nv, const struct pkt *p)
{
	if (p->tcp_flags & TCP_FLAG_SYN) {
		__sync_fetch_and_and(&nv->flags, ~NAT_SYN_WAIT);
		return 0;
	}
	return !(p->tcp_flags & TCP_FLAG_RST);
}
