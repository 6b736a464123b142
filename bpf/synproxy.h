/*
 * synproxy.h: the SYN proxy. A SYN flood's spoofed SYNs, each given a SNAT
 * port and forwarded, fill a target's ports and leave request sockets at
 * the target that eat real clients' SYNs on those ports. With the proxy
 * on (config.synproxy), XDP answers a SYN to a redirected frontend itself
 * with a SYN-ACK whose sequence number is a kernel SYN cookie
 * (bpf_tcp_raw_gen_syncookie_*) and keeps nothing. Only an ACK carrying a
 * valid cookie (bpf_tcp_raw_check_syncookie_*) starts a flow: it gets its
 * SNAT port and entries, and becomes the SYN to the target (the client's
 * ISN, its MSS read back from the cookie); the target's SYN-ACK becomes
 * the ACK back to the target, and from then on the NAT path adds the
 * difference of the two ISNs to the client's acknowledgment numbers and
 * takes it from the target's sequence numbers (x->seq_fix: rewrite,
 * nat.h).
 *
 * Options: MSS only. The cookie holds the client's MSS (one of the
 * kernel's four per family); window scaling, SACK and timestamps are not
 * offered to the client nor asked of the target, so neither side uses
 * them and nothing but the two sequence numbers needs translating. What
 * it costs: a window of at most 64 KB (a flow's rate <= 64 KB per round
 * trip) and no SACK recovery, which is why the proxy is meant to be on
 * only while SNAT ports are under pressure, and then while its cookies go
 * unanswered (SYNPROXY_FLOOD, as Linux's tcp_syncookies=1 sends cookies
 * only while its SYN queue overflows: the kernel's own compromise).
 *
 * A client's packet that arrives before its target's SYN-ACK (its first
 * request, sent as soon as it holds our SYN-ACK) cannot be held: XDP turns
 * it into the SYN again (so a SYN to the target lost, or eaten by a stale
 * request socket, is sent again) and its data is lost; the client sends it
 * again after its retransmission timeout (counted: synproxy_early).
 */

#include "conntrack.h"
#include "counters.h"
#include "csum.h"

#ifndef SYNPROXY_H
#define SYNPROXY_H

/* The MSS the proxy announces to clients, per family (mss_clamp lowers what it sends on to a target). */
#define SYNPROXY_MSS4 1460
#define SYNPROXY_MSS6 1440

/*
 * SYNPROXY_FLOOD's state: on until `until` (bpf_ktime_get_coarse_ns).
 * SNAT port pressure turns it on (synproxy_pressure); while on, the flood
 * no longer takes ports, so what keeps it on is cookies going unanswered:
 * per second (window), cookies sent and valid cookie ACKs; more than
 * SYNPROXY_UNANSWERED unanswered, and more than half, extend it (real
 * clients answer theirs within a round trip). Counts are shared by all
 * CPUs (atomic adds; a window's reset may lose a few). Pinned: XDP reads
 * it, XDP and tc turn it on.
 */
struct synproxy_state {
	__u64 until;
	__u64 window;
	__u64 sent;
	__u64 ok;
};

ROAM_MAP(roam_synproxy, BPF_MAP_TYPE_ARRAY, 1, __u32, struct synproxy_state, 0);

/* synproxy_pressure: SNAT ports are under pressure (nat.h snat_alloc): SYNPROXY_FLOOD proxies new SYNs for synproxy_hold_ns. */
static __always_inline void synproxy_pressure(const struct config *cfg, __u64 now)
{
	if (cfg->synproxy != SYNPROXY_FLOOD)
		return;
	__u32 zero = 0;
	struct synproxy_state *st = bpf_map_lookup_elem(&roam_synproxy, &zero);
	if (st && st->until < now + cfg->synproxy_hold_ns / 2)
		st->until = now + cfg->synproxy_hold_ns;
}

/* synproxy_answered counts a cookie sent (ok 0) or a valid cookie ACK (ok 1); unanswered ones keep SYNPROXY_FLOOD on. */
static __always_inline void synproxy_answered(int ok)
{
	__u32 zero = 0;
	const struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	struct synproxy_state *st = bpf_map_lookup_elem(&roam_synproxy, &zero);
	if (!cfg || !st || cfg->synproxy != SYNPROXY_FLOOD)
		return;
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now - st->window >= 1000000000ULL) {
		st->window = now;
		st->sent = 0;
		st->ok = 0;
	}
	if (ok) {
		__sync_fetch_and_add(&st->ok, 1);
		return;
	}
	__u64 sent = __sync_fetch_and_add(&st->sent, 1) + 1, okn = st->ok;
	if (sent > okn + SYNPROXY_UNANSWERED && (sent - okn) * 2 > sent && st->until < now + cfg->synproxy_hold_ns / 2)
		st->until = now + cfg->synproxy_hold_ns;
}

/*
 * synproxy_seq adds x->seq_delta to the sequence or acknowledgment number
 * (x->seq_fix) of the TCP header at l4 and returns the checksum change
 * (both attach points; rewrite, nat.h, folds it into the ports' change).
 */
static __always_inline __u32 synproxy_seq(void *data, void *data_end, __u32 l4, const struct xlate *x)
{
	struct tcp_hdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return 0;
	__u16 old[4], new[4];
	__builtin_memcpy(old, &th->seq, 8);
	if (x->seq_fix == XLATE_SEQ)
		th->seq = bpf_htonl(bpf_ntohl(th->seq) + x->seq_delta);
	else if (th->flags & TCP_FLAG_ACK)
		th->ack_seq = bpf_htonl(bpf_ntohl(th->ack_seq) + x->seq_delta);
	__builtin_memcpy(new, &th->seq, 8);
	return csum_diff16(old, new, 4);
}

/* synproxy_on: whether a new SYN to a redirected frontend is answered by the proxy. */
static __always_inline int synproxy_on(const struct config *cfg, __u64 now)
{
	if (cfg->synproxy == SYNPROXY_ALWAYS)
		return 1;
	if (cfg->synproxy != SYNPROXY_FLOOD)
		return 0;
	__u32 zero = 0;
	struct synproxy_state *st = bpf_map_lookup_elem(&roam_synproxy, &zero);
	return st && now < st->until;
}

/*
 * Rebuild flags (xdp_tcp_rebuild's how): SWAP turns the packet back to
 * its sender (MAC addresses, addresses, ports); the low byte is the TCP
 * flags to set.
 */
#define REBUILD_SWAP 0x100

/*
 * xdp_tcp: the IP header (ip) and TCP header (th) of the TCP packet at
 * ctx (no IP options or IPv6 extension headers: the parser passed it), and
 * whether it is IPv4. Each family's TCP header is checked against the
 * packet's end at its constant offset, which proves the IP header before
 * it too (the cookie helpers read a whole one).
 */
struct xdp_tcp {
	void *ip;
	struct tcp_hdr *th;
	int v4;
};

/* xdp_tcp_find fills h for ctx's packet: 0, or -1 if the packet is too short. */
static __always_inline int xdp_tcp_find(struct xdp_md *ctx, struct xdp_tcp *h)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	h->ip = data + L3_OFF;
	h->v4 = eth->proto == bpf_htons(ETH_P_IP_);
	if (h->v4)
		h->th = data + L4_OFF4;
	else
		h->th = data + L4_OFF6;
	if ((void *)(h->th + 1) > data_end)
		return -1;
	return 0;
}

/* synproxy_check: the kernel's check of the ACK h for a valid cookie; 0 if it is one. */
static __always_inline long synproxy_check(const struct xdp_tcp *h)
{
	if (h->v4)
		return bpf_tcp_raw_check_syncookie_ipv4(h->ip, (void *)h->th);
	return bpf_tcp_raw_check_syncookie_ipv6(h->ip, (void *)h->th);
}

/*
 * xdp_tcp_rebuild makes the TCP packet in ctx (no IP options or IPv6
 * extension headers: the parser passed it) a bare TCP header with the
 * given flags, sequence and acknowledgment numbers, window (winmss >> 16)
 * and, if winmss & 0xffff, an MSS option; no payload. Checksums are
 * computed whole. Returns XDP_TX for an answer (SWAP), VERDICT_FLOW for a
 * packet going on, XDP_DROP if it cannot be resized. Not inlined: off the
 * per-packet path.
 */
static __noinline int xdp_tcp_rebuild(struct xdp_md *ctx, __u32 how, __u32 seq, __u32 ack, __u32 winmss)
{
	struct xdp_tcp h;
	if (xdp_tcp_find(ctx, &h))
		return XDP_DROP;
	int v4 = h.v4;
	__u32 l4 = v4 ? L4_OFF4 : L4_OFF6;
	__u16 mss = winmss & 0xffff;
	int len = ctx->data_end - ctx->data;
	int want = l4 + sizeof(struct tcp_hdr) + (mss ? 4 : 0);
	if (len != want && bpf_xdp_adjust_tail(ctx, want - len)) {
		/* No room to grow by the option: without it (the peer then assumes 536). */
		mss = 0;
		want = l4 + sizeof(struct tcp_hdr);
		if (len != want && bpf_xdp_adjust_tail(ctx, want - len))
			return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	struct tcp_hdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;
	if (how & REBUILD_SWAP) {
		__u8 mac[ETH_ALEN_];
		__builtin_memcpy(mac, eth->dst, ETH_ALEN_);
		__builtin_memcpy(eth->dst, eth->src, ETH_ALEN_);
		__builtin_memcpy(eth->src, mac, ETH_ALEN_);
		__be16 port = th->source;
		th->source = th->dest;
		th->dest = port;
	}
	__u32 thl = sizeof(*th) + (mss ? 4 : 0);
	th->seq = bpf_htonl(seq);
	th->ack_seq = bpf_htonl(ack);
	th->doff_res = (thl / 4) << 4;
	th->flags = how & 0xff;
	th->window = bpf_htons(winmss >> 16);
	th->urg_ptr = 0;
	th->check = 0;
	__u32 sum;
	if (v4) {
		struct ip4_hdr *ip = data + L3_OFF;
		if (how & REBUILD_SWAP) {
			__be32 a = ip->saddr;
			ip->saddr = ip->daddr;
			ip->daddr = a;
			ip->id = 0;
			ip->frag_off = bpf_htons(0x4000); /* DF */
			ip->ttl = 64;
		}
		ip->tot_len = bpf_htons(sizeof(*ip) + thl);
		ip->check = 0;
		ip->check = csum_fold_neg((__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		__be32 tail = bpf_htonl((IPPROTO_TCP_ << 16) | thl); /* zero, protocol, TCP length */
		sum = bpf_csum_diff(0, 0, (__be32 *)&ip->saddr, 8, 0);
		sum = bpf_csum_diff(0, 0, &tail, sizeof(tail), sum);
	} else {
		struct ip6_hdr *ip6 = data + L3_OFF;
		if (how & REBUILD_SWAP) {
			__u8 a[16];
			__builtin_memcpy(a, ip6->saddr, 16);
			__builtin_memcpy(ip6->saddr, ip6->daddr, 16);
			__builtin_memcpy(ip6->daddr, a, 16);
			ip6->hop_limit = 64;
		}
		ip6->payload_len = bpf_htons(thl);
		__be32 tail[2] = {bpf_htonl(thl), bpf_htonl(IPPROTO_TCP_)};
		sum = bpf_csum_diff(0, 0, (__be32 *)ip6->saddr, 32, 0);
		sum = bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
	}
	if (mss) {
		__u8 *opt = (void *)(th + 1);
		if ((void *)(opt + 4) > data_end)
			return XDP_DROP;
		opt[0] = 2; /* MSS */
		opt[1] = 4;
		opt[2] = mss >> 8;
		opt[3] = mss & 0xff;
		sum = bpf_csum_diff(0, 0, (__be32 *)th, sizeof(*th) + 4, sum);
	} else {
		sum = bpf_csum_diff(0, 0, (__be32 *)th, sizeof(*th), sum);
	}
	th->check = csum_fold_neg(sum);
	return (how & REBUILD_SWAP) ? XDP_TX : VERDICT_FLOW;
}

/*
 * synproxy_cookie asks the kernel for the SYN cookie of a SYN from the
 * packet's source to its destination (ip: its IP header, the helper reads
 * the addresses there) with ports sport, dport, sequence number seq and
 * MSS option mss: a SYN header built in scratch. Returns the helper's
 * answer (cookie in the low 32 bits, the MSS it stands for above) or < 0.
 */
static __always_inline __s64 synproxy_cookie(void *ip, int v4, struct scratch *sc, __be16 sport, __be16 dport,
					     __u32 seq, __u16 mss)
{
	struct tcp_hdr *th = (struct tcp_hdr *)sc->sp.th;
	__builtin_memset(sc->sp.th, 0, sizeof(sc->sp.th));
	th->source = sport;
	th->dest = dport;
	th->seq = bpf_htonl(seq);
	th->doff_res = 6 << 4;
	th->flags = TCP_FLAG_SYN;
	sc->sp.th[20] = 2;
	sc->sp.th[21] = 4;
	sc->sp.th[22] = mss >> 8;
	sc->sp.th[23] = mss & 0xff;
	if (v4)
		return bpf_tcp_raw_gen_syncookie_ipv4(ip, (void *)sc->sp.th, sizeof(sc->sp.th));
	return bpf_tcp_raw_gen_syncookie_ipv6(ip, (void *)sc->sp.th, sizeof(sc->sp.th));
}

/* The kernel's cookie MSS tables (net/ipv4/syncookies.c, net/ipv6/syncookies.c msstab). */
#define MSSTAB4(i) ((i) == 0 ? 536 : (i) == 1 ? 1300 : (i) == 2 ? 1440 : 1460)
#define MSSTAB6(i) ((i) == 0 ? 1220 : (i) == 1 ? 1420 : (i) == 2 ? 1440 : 8940)

/*
 * synproxy_syn answers the client's SYN (to a redirected frontend) with a
 * SYN-ACK from the frontend: sequence number a SYN cookie for the SYN's
 * tuple, sequence number and MSS (an MSS option in the first slot, where
 * every common stack puts it; else the default 536 is assumed), our MSS,
 * no other option. XDP_TX; nothing is kept.
 */
static __noinline int synproxy_syn(struct xdp_md *ctx)
{
	struct xdp_tcp h;
	if (xdp_tcp_find(ctx, &h))
		return XDP_DROP;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcp_hdr *th = h.th;
	__u16 mss = 536;
	__u8 *opt = (void *)(th + 1);
	if ((th->doff_res >> 4) >= 6 && (void *)(opt + 4) <= data_end && opt[0] == 2 && opt[1] == 4)
		mss = (opt[2] << 8) | opt[3];
	__u32 seq = bpf_ntohl(th->seq);
	struct scratch *sc = scratch(); /* where the cookie's SYN header is built */
	if (!sc)
		return XDP_PASS;
	__s64 c = synproxy_cookie(h.ip, h.v4, sc, th->source, th->dest, seq, mss);
	if (c < 0)
		return XDP_DROP;
	count_reason(REASON_SYNPROXY_COOKIE_SENT);
	synproxy_answered(0);
	return xdp_tcp_rebuild(ctx, REBUILD_SWAP | TCP_FLAG_SYN | TCP_FLAG_ACK, (__u32)c, seq + 1,
			       (65535u << 16) | (h.v4 ? SYNPROXY_MSS4 : SYNPROXY_MSS6));
}

/*
 * synproxy_is_cookie: the client's TCP packet at ctx acknowledges a valid
 * cookie (checked only: nothing counted, nothing changed). A proxied
 * connection that reuses the tuple of a finished flow (a client's port,
 * free again at once when the target closed first) meets that flow's
 * entry: its first ACK must start a new flow, not ride the old one.
 */
static __noinline int synproxy_is_cookie(struct xdp_md *ctx)
{
	struct xdp_tcp h;
	return xdp_tcp_find(ctx, &h) == 0 && synproxy_check(&h) == 0;
}

/*
 * synproxy_ack checks the client's ACK (no flow: to a redirected frontend)
 * for a cookie. Invalid: counted, XDP_DROP. Valid: the MSS it stands for
 * is found by asking for the cookie of each of the table's (the check
 * helper does not say it; a cookie of the previous minute matches none:
 * the table's smallest); the ACK becomes the SYN to the target (the
 * client's ISN and MSS, its window), sc->sp says what the flow needs, and
 * VERDICT_FLOW.
 */
static __noinline int synproxy_ack(struct xdp_md *ctx)
{
	struct scratch *sc = scratch();
	if (!sc)
		return XDP_PASS;
	struct xdp_tcp h;
	if (xdp_tcp_find(ctx, &h))
		return XDP_DROP;
	struct tcp_hdr *th = h.th;
	int v4 = h.v4;
	if (synproxy_check(&h) != 0) {
		count_reason(REASON_SYNPROXY_COOKIE_BAD);
		return XDP_DROP;
	}
	count_reason(REASON_SYNPROXY_COOKIE_OK);
	synproxy_answered(1);
	sc->sp.isn = bpf_ntohl(th->seq) - 1;
	sc->sp.cookie = bpf_ntohl(th->ack_seq) - 1;
	sc->sp.win = bpf_ntohs(th->window);
	sc->sp.mss = v4 ? MSSTAB4(0) : MSSTAB6(0);
	__be16 sport = th->source, dport = th->dest;
#pragma unroll
	for (int i = 3; i > 0; i--) {
		__u16 m = v4 ? MSSTAB4(i) : MSSTAB6(i);
		__s64 c = synproxy_cookie(h.ip, v4, sc, sport, dport, sc->sp.isn, m);
		if (c >= 0 && (__u32)c == sc->sp.cookie) {
			sc->sp.mss = m;
			break;
		}
	}
	return xdp_tcp_rebuild(ctx, TCP_FLAG_SYN, sc->sp.isn, 0, ((__u32)sc->sp.win << 16) | sc->sp.mss);
}

/*
 * synproxy_wanted: roam_new_flow's question for a TCP packet of no flow to
 * a redirected frontend: whether it is the proxy's (a SYN while the proxy
 * is on; an ACK while it is configured, which may carry a cookie: the
 * caller has made sure no socket of this host owns it). roam_new_flow
 * then returns VERDICT_SYNPROXY and roam_process calls synproxy_new: each
 * frame on its own, as the stack is tight.
 */
static __always_inline int synproxy_wanted(const struct pkt *p, const struct config *cfg, __u64 now)
{
	__u8 f = p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST);
	if (f == TCP_FLAG_SYN)
		return synproxy_on(cfg, now);
	return f == TCP_FLAG_ACK;
}

/*
 * synproxy_new: a packet synproxy_wanted. A SYN is answered (a verdict);
 * an ACK is checked for a cookie: a verdict, or VERDICT_FLOW: it is now
 * the SYN to the target and p says so, and the roam_new_flow the caller
 * calls next makes its flow a proxied one (sc->sp.proxied).
 */
static __always_inline int synproxy_new(struct xdp_md *ctx, struct pkt *p)
{
	if (p->tcp_flags & TCP_FLAG_SYN)
		return synproxy_syn(ctx);
	int rc = synproxy_ack(ctx);
	if (rc != VERDICT_FLOW)
		return rc;
	struct scratch *sc = scratch();
	if (!sc)
		return XDP_DROP;
	sc->sp.proxied = 1;
	p->tcp_flags = TCP_FLAG_SYN;
	p->len = ctx->data_end - ctx->data;
	return VERDICT_FLOW;
}

/* synproxy_resend: a proxied flow's client packet before the target's SYN-ACK becomes the SYN again (its data is lost). */
static __always_inline int synproxy_resend(struct xdp_md *ctx, struct pkt *p, const struct ct_value *cv)
{
	int rc = xdp_tcp_rebuild(ctx, TCP_FLAG_SYN, cv->syn_seq, 0, (65535u << 16) | cv->syn_mss);
	p->tcp_flags = TCP_FLAG_SYN;
	p->len = ctx->data_end - ctx->data;
	return rc;
}

/*
 * synproxy_ack_target: the target's SYN-ACK of a proxied flow (the first
 * or one sent again) becomes the ACK that completes the target's
 * handshake, sent back to it: sequence number its acknowledgment number,
 * acknowledging its ISN, the client's window.
 */
static __always_inline int synproxy_ack_target(struct xdp_md *ctx, const struct nat_value *nv)
{
	struct xdp_tcp h;
	if (xdp_tcp_find(ctx, &h))
		return XDP_DROP;
	struct tcp_hdr *th = h.th;
	return xdp_tcp_rebuild(ctx, REBUILD_SWAP | TCP_FLAG_ACK, bpf_ntohl(th->ack_seq), bpf_ntohl(th->seq) + 1,
			       (__u32)nv->proxy_win << 16);
}

/* synproxy_mark makes the new flow fv/rv a proxied one, from what its cookie said (sc->sp). */
static __always_inline void synproxy_mark(struct ct_value *fv, struct nat_value *rv, const struct scratch *sc)
{
	fv->state = CT_PROXY | CT_PROXY_WAIT;
	fv->syn_seq = sc->sp.isn;
	fv->syn_mss = sc->sp.mss;
	rv->flags |= NAT_PROXY;
	rv->proxy_isn = sc->sp.cookie;
	rv->proxy_win = sc->sp.win;
}

#endif /* SYNPROXY_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef SYNPROXY_PROG_H
#define SYNPROXY_PROG_H

#ifdef ROAM_XDP
#define ROAM_SYNPROXY 1
#else
#define ROAM_SYNPROXY 0 /* tc: local senders are not proxied */
#define synproxy_wanted(p, cfg, now) 0
#define synproxy_is_cookie(ctx) 0
#define synproxy_new(ctx, p) VERDICT_PASS
#define synproxy_resend(ctx, p, cv) VERDICT_DROP
#define synproxy_ack_target(ctx, nv) VERDICT_DROP
#endif

/*
 * synproxy_forward: a client's packet of a proxied flow (cv). Before the
 * target's SYN-ACK: our SYN (passed up by XDP to tc) and an RST go on as
 * they are; anything else becomes the SYN again (synproxy_resend). After:
 * its acknowledgment number is moved to the target's numbers.
 */
static __always_inline int synproxy_forward(ROAM_CTX *ctx, struct pkt *p, const struct ct_value *cv,
					    struct xlate *x)
{
	if (!(cv->state & CT_PROXY_WAIT)) {
		x->seq_fix = XLATE_ACK;
		x->seq_delta = cv->seq_delta;
		return VERDICT_FLOW;
	}
	if (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST))
		return VERDICT_FLOW;
	count_reason(REASON_SYNPROXY_EARLY);
	return synproxy_resend(ctx, p, cv);
}

/*
 * synproxy_reply: a target's packet of a proxied flow (nv). Its SYN-ACK
 * fixes the ISNs' difference (both entries; the forward entry's wait
 * ends) and becomes the ACK back to the target (synproxy_ack_target;
 * counted once as synproxy_flows). An RST before it is given the sequence
 * number the client expects. Anything else before it is a stale request
 * socket's (synrecv.h, untranslated); after, its sequence number is moved
 * to the client's numbers.
 */
static __always_inline int synproxy_reply(ROAM_CTX *ctx, struct nat_value *nv, const struct pkt *p,
					  struct xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcp_hdr *th = data + (p->family == FAMILY_V4 ? L4_OFF4 : L4_OFF6);
	if ((void *)(th + 1) > data_end)
		return VERDICT_DROP;
	__u32 seq = bpf_ntohl(th->seq);
	if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		if (nv->flags & NAT_SYN_WAIT) {
			struct scratch *sc = scratch();
			if (!sc)
				return VERDICT_DROP;
			__u32 delta = seq - nv->proxy_isn;
			nv->seq_delta = delta;
			flow_key_of(&sc->fk, nv, p->proto);
			struct ct_value *v = ct_lookup(&sc->fk);
			if (v && (v->state & CT_PROXY_WAIT)) {
				v->seq_delta = delta;
				__sync_fetch_and_or(&v->state, CT_ESTABLISHED); /* our ACK completes the target's handshake */
				__sync_fetch_and_and(&v->state, ~CT_PROXY_WAIT);
			}
			if (__sync_fetch_and_and(&nv->flags, ~NAT_SYN_WAIT) & NAT_SYN_WAIT)
				count_reason(REASON_SYNPROXY_FLOWS);
		}
		return synproxy_ack_target(ctx, nv);
	}
	if (nv->flags & NAT_SYN_WAIT) {
		if (p->tcp_flags & TCP_FLAG_RST) {
			x->seq_fix = XLATE_SEQ;
			x->seq_delta = nv->proxy_isn + 1 - seq;
		}
		return VERDICT_FLOW;
	}
	x->seq_fix = XLATE_SEQ;
	x->seq_delta = -nv->seq_delta;
	return VERDICT_FLOW;
}

#endif /* SYNPROXY_PROG_H */
