/* parse.h: Ethernet/IPv4/IPv6/TCP/UDP parsing into struct pkt, with every bound and consistency check. */
#pragma once

#include "types.h"

/* No VLAN tags: L3 starts right after Ethernet; L4 right after an option-less IPv4 or an extension-less IPv6 header. */
#define L3_OFF ((__u32)sizeof(struct eth_hdr))
#define L4_OFF4 (L3_OFF + (__u32)sizeof(struct ip4_hdr))
#define L4_OFF6 (L3_OFF + (__u32)sizeof(struct ip6_hdr))

/* Verdict of a subprogram besides VERDICT_PASS and VERDICT_DROP: go on, as the returned entry or translation says. */
#define VERDICT_FLOW (-3) /* neither an XDP nor a tc verdict (tc.c passes with TC_ACT_UNSPEC, -1) */

enum parse_result {
	PARSE_OK = 0,	/* a TCP or UDP packet we can rewrite */
	PARSE_SKIP = 1, /* not for us (not IP, not TCP/UDP): pass quietly */
	PARSE_ERR = 2,	/* pass untouched and count p->reason */
	PARSE_ICMP = 3, /* ICMP or ICMPv6 (outer header in struct pkt): an error about a flow of ours? (icmp.h) */
};

/* What the programs need from a packet: its tuple first, as a struct ct_key starts (types.h). */
struct pkt {
	FLOW_TUPLE;
	__u8 tcp_flags;
	__u8 reason;
	__u32 len; /* whole frame, for byte counters */
	__u16 ip_len; /* IP total length (header + payload) */
	__u8 inner_proto; /* ICMP error: the quoted packet's protocol */
	__u8 ports_only; /* PARSE_ERR for a fragment, IP options or IPv6 extensions: tuple read (peek_tuple), packet not to be rewritten */
	__be32 tcp_ack; /* acknowledgment number, as on the wire */
	__u32 fin_end;	/* FIN only: the sequence number that acknowledges it (host order) */
};

/*
 * What a packet becomes: its new source and destination, and the frontend
 * and action it is counted under. For an ICMP error (icmp.h) the addresses
 * are the outer ones, and the quoted tuple becomes (dst, dport) -> (src, sport).
 */
struct xlate {
	__u8 src[16];
	__u8 dst[16]; /* right after src: icmp_rewrite sums both at once */
	__be16 sport;
	__be16 dport;
	__u32 id;
	__u8 action;
	__u8 csum_set;
	__u8 seq_fix; /* TCP of a SYN-proxied flow (synproxy.h): add seq_delta to the sequence number (XLATE_SEQ) or acknowledgment number (XLATE_ACK) */
	__u8 pad;
	__u16 csum_addrs; /* with csum_set: the rewrite's checksum changes, from the flow's entry (struct ct_value) */
	__u16 csum_ports;
	__u32 seq_delta;
	__u16 counter; /* the target's index in roam_target_counters (0: not counted) */
	__u16 pad2;
} __attribute__((aligned(8))); /* 8: nexthop.h reads its addresses as 64-bit words */
#define XLATE_SEQ 1
#define XLATE_ACK 2

static __always_inline void addr_from_v4(__u8 *dst, __be32 a)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* parse_l4 checks the TCP or UDP header at l4 (bounded by l4_end, the end of the IP payload). */
static __always_inline int parse_l4(void *data, void *data_end, __u32 l4, __u32 l4_end, struct pkt *p)
{
	if (p->proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = data + l4;
		if ((void *)(th + 1) > data_end || l4 + sizeof(*th) > l4_end)
			goto malformed;
		__u32 doff = (th->doff_res >> 4) * 4;
		if (doff < sizeof(*th) || l4 + doff > l4_end)
			goto malformed;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = th->flags;
		p->tcp_ack = th->ack_seq;
		if (th->flags & TCP_FLAG_FIN)
			p->fin_end = bpf_ntohl(th->seq) + (l4_end - l4 - doff) + 1 + ((th->flags & TCP_FLAG_SYN) ? 1 : 0);
		return PARSE_OK;
	}
	struct udp_hdr *uh = data + l4;
	if ((void *)(uh + 1) > data_end || l4 + sizeof(*uh) > l4_end)
		goto malformed;
	__u16 ulen = bpf_ntohs(uh->len);
	if (ulen < sizeof(*uh) || l4 + ulen > l4_end)
		goto malformed;
	p->sport = uh->source;
	p->dport = uh->dest;
	return PARSE_OK;
malformed:
	p->reason = REASON_MALFORMED;
	return PARSE_ERR;
}

/*
 * peek_tuple reads the TCP or UDP ports at l4 of a packet the programs do
 * not rewrite (a first fragment, IPv4 options, IPv6 extension headers), so
 * roam_process can tell whether it is for a redirected frontend; the
 * addresses, family and protocol are set by the caller. Sets ports_only.
 */
static __always_inline void peek_tuple(void *data, void *data_end, __u32 l4, __u8 proto, struct pkt *p)
{
	if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
		return;
	__be16 *ports = data + l4;
	if ((void *)(ports + 2) > data_end)
		return;
	p->proto = proto;
	p->sport = ports[0];
	p->dport = ports[1];
	p->ports_only = 1;
}

/*
 * peek_ipv6_ext walks up to 4 IPv6 extension headers (hop-by-hop, routing,
 * destination options, a first fragment) from nh at L4_OFF6 to a TCP or
 * UDP header and peeks at its ports.
 */
static __always_inline void peek_ipv6_ext(void *data, void *data_end, __u8 nh, struct pkt *p)
{
	__u32 off = L4_OFF6;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (nh == IPPROTO_TCP_ || nh == IPPROTO_UDP_) {
			peek_tuple(data, data_end, off, nh, p);
			return;
		}
		__u8 *h = data + off;
		if ((void *)(h + 8) > data_end)
			return;
		if (nh == 44) { /* fragment: only the first has the ports */
			if (((h[2] << 8) | h[3]) & 0xfff8)
				return;
			off += 8;
		} else if (nh == 0 || nh == 43 || nh == 60) {
			off += ((__u32)h[1] + 1) * 8;
		} else {
			return;
		}
		nh = h[0];
	}
	if (nh == IPPROTO_TCP_ || nh == IPPROTO_UDP_)
		peek_tuple(data, data_end, off, nh, p);
}

static __always_inline int is_ipv6_ext(__u8 nh)
{
	switch (nh) {
	case 0:	  /* hop-by-hop */
	case 43:  /* routing */
	case 44:  /* fragment */
	case 50:  /* ESP */
	case 51:  /* AH */
	case 60:  /* destination options */
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
		return 1;
	}
	return 0;
}

/*
 * parse_packet reads the headers in [data, data_end) (which must hold them:
 * tc pulls them into the linear area first) and checks the IP lengths
 * against wire_len, the whole frame (an skb's payload may sit in fragments
 * beyond data_end).
 */
static __always_inline int parse_packet(void *data, void *data_end, __u32 wire_len, struct pkt *p)
{
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_SKIP;
	p->len = wire_len;

	if (eth->proto == bpf_htons(ETH_P_IP_)) {
		struct ip4_hdr *iph = data + L3_OFF;
		if ((void *)(iph + 1) > data_end)
			goto malformed;
		__u32 ihl = (iph->ver_ihl & 0x0f) * 4;
		__u32 tot = bpf_ntohs(iph->tot_len);
		if ((iph->ver_ihl >> 4) != 4 || ihl < sizeof(*iph) || tot < ihl || L3_OFF + tot > p->len)
			goto malformed;
		if (iph->protocol != IPPROTO_TCP_ && iph->protocol != IPPROTO_UDP_ && iph->protocol != IPPROTO_ICMP_)
			return PARSE_SKIP;
		if (iph->protocol == IPPROTO_ICMP_) {
			if ((iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) || ihl != sizeof(*iph))
				return PARSE_SKIP; /* not an error we can read: the host's */
			goto icmp4;
		}
		if ((iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) || ihl != sizeof(*iph)) {
			p->reason = (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)) ? REASON_FRAGMENT : REASON_IP_OPTIONS;
			p->family = FAMILY_V4;
			addr_from_v4(p->saddr, iph->saddr);
			addr_from_v4(p->daddr, iph->daddr);
			if (!(iph->frag_off & bpf_htons(IP_OFFSET_)))
				peek_tuple(data, data_end, L3_OFF + ihl, iph->protocol, p);
			return PARSE_ERR;
		}
	icmp4:
		p->family = FAMILY_V4;
		p->proto = iph->protocol;
		p->ip_len = tot;
		addr_from_v4(p->saddr, iph->saddr);
		addr_from_v4(p->daddr, iph->daddr);
		if (p->proto == IPPROTO_ICMP_)
			return PARSE_ICMP;
		return parse_l4(data, data_end, L4_OFF4, L3_OFF + tot, p);
	}
	if (eth->proto == bpf_htons(ETH_P_IPV6_)) {
		struct ip6_hdr *ip6 = data + L3_OFF;
		if ((void *)(ip6 + 1) > data_end)
			goto malformed;
		__u32 plen = bpf_ntohs(ip6->payload_len);
		if ((bpf_ntohl(ip6->vtc_flow) >> 28) != 6 || L4_OFF6 + plen > p->len)
			goto malformed;
		if (ip6->nexthdr != IPPROTO_TCP_ && ip6->nexthdr != IPPROTO_UDP_ && ip6->nexthdr != IPPROTO_ICMPV6_) {
			if (!is_ipv6_ext(ip6->nexthdr))
				return PARSE_SKIP;
			/* Look one header further: ICMPv6 behind hop-by-hop (MLD) is never for a frontend. */
			__u8 *ext = data + L4_OFF6;
			if ((void *)(ext + 2) <= data_end && ext[0] == 58 /* ICMPv6 */)
				return PARSE_SKIP;
			p->reason = ip6->nexthdr == 44 ? REASON_FRAGMENT : REASON_IPV6_EXT;
			p->family = FAMILY_V6;
			__builtin_memcpy(p->saddr, ip6->saddr, 16);
			__builtin_memcpy(p->daddr, ip6->daddr, 16);
			peek_ipv6_ext(data, data_end, ip6->nexthdr, p);
			return PARSE_ERR;
		}
		p->family = FAMILY_V6;
		p->proto = ip6->nexthdr;
		p->ip_len = sizeof(*ip6) + plen;
		__builtin_memcpy(p->saddr, ip6->saddr, 16);
		__builtin_memcpy(p->daddr, ip6->daddr, 16);
		if (p->proto == IPPROTO_ICMPV6_)
			return PARSE_ICMP;
		return parse_l4(data, data_end, L4_OFF6, L4_OFF6 + plen, p);
	}
	return PARSE_SKIP;
malformed:
	p->reason = REASON_MALFORMED;
	return PARSE_ERR;
}

/* sock_tuple fills a socket lookup tuple with the packet's addresses and ports; returns its size. */
static __always_inline __u32 sock_tuple(struct bpf_sock_tuple *t, const struct pkt *p)
{
	if (p->family == FAMILY_V4) {
		__builtin_memcpy(&t->ipv4.saddr, p->saddr + 12, 4);
		__builtin_memcpy(&t->ipv4.daddr, p->daddr + 12, 4);
		t->ipv4.sport = p->sport;
		t->ipv4.dport = p->dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
	__builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
	t->ipv6.sport = p->sport;
	t->ipv6.dport = p->dport;
	return sizeof(t->ipv6);
}

/* host_socket_owns: a TCP socket of this host (not a listener) owns p's tuple (ctx: either program's). */
static __always_inline int host_socket_owns(void *ctx, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__u32 size = sock_tuple(&t, p);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int owned = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return owned;
}
