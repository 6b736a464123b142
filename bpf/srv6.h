/* srv6.h: SRv6 path mode (XDP): H.Encaps at the home, and at this node's SID: deliver to a local copy, forward on, decapsulate replies. */

#include "conntrack.h"
#include "counters.h"
#include "csum.h"
#include "fib.h"

#ifndef SRV6_H
#define SRV6_H

/*
 * The attach point provides roam_xmit (next hop, rewrite as a struct xlate
 * says, and out).
 *
 * Wire format (RFC 8754, RFC 8986): outer IPv6 (next header 43), then a
 * Segment Routing Header with the segment list in reverse order (segs[0] is
 * the last segment), then the client's packet unchanged (IPv4: next header
 * 4, IPv6: 41). A path is 1 segment (steady state: [abroad]) or 2 (during
 * a migration: [old, new]).
 */

#ifndef SRV6_FLOWS_MAX
#define SRV6_FLOWS_MAX 65536 /* flows a location delivered locally (kept while its copy drains) */
#endif
#ifndef SRV6_LOCATORS_MAX
#define SRV6_LOCATORS_MAX 1024 /* roam's locator prefixes, all clusters */
#endif

#define SRV6_MAX_SEGS 2
#define IPV6_MIN_MTU 1280 /* RFC 8200 section 5 */
#define SRV6_HOP_LIMIT 64
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define IPPROTO_ROUTING_ 43
#define SRH_TYPE_SEG6 4
#define SRH_LEN(n) ((__u32)sizeof(struct srh) + 16 * (n))
#define SRV6_OVERHEAD(n) ((__u32)sizeof(struct ip6_hdr) + SRH_LEN(n))

/* A frontend's copy on this node, as the controller set it (roam_srv6_local); absent: gone. */
enum srv6_state {
	SRV6_GONE = 0,
	SRV6_SERVING = 1,  /* deliver every packet */
	SRV6_DRAINING = 2, /* deliver the flows it has, send new ones on */
};

/* Per-path counters (roam_srv6_stats), indexed by id * SRV6_STAT_MAX + stat. */
enum srv6_stat {
	SRV6_STAT_ENCAP = 0,	/* home: encapsulated (id: the frontend's) */
	SRV6_STAT_DELIVER = 1,	/* at a SID: decapsulated, delivered to the local copy (id: the local entry's) */
	SRV6_STAT_FORWARD = 2,	/* at a SID: sent on to the next segment (id: the local entry's, 0 if none) */
	SRV6_STAT_DECAP = 3,	/* home: a reply decapsulated and sent to the client (id: the frontend's) */
	SRV6_STAT_MSS = 4,	/* home: MSS clamped on a SYN */
	SRV6_STAT_MAX = 5,
};

struct srh {
	__u8 nexthdr;
	__u8 hdrlen; /* 8-octet units beyond the first 8 */
	__u8 type;
	__u8 segments_left;
	__u8 last_entry;
	__u8 flags;
	__be16 tag;
};

/* This node's SRv6 configuration, written by Go. */
struct srv6_config {
	__u8 sid[16];	/* this node's SID: outer source of encapsulation, and the SID it answers */
	__u16 mss4;	/* MSS clamp on SYNs encapsulated, per inner family (0: none) */
	__u16 mss6;
	__u8 has_sid;
	__u8 pad[3];
};

/* LPM trie key of roam_srv6_locators. */
struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* A copy on this node of a frontend redirected by SRv6 (roam_srv6_local). */
struct srv6_local {
	__u32 state; /* enum srv6_state */
	__u32 id;    /* counters index, 1..MAX_FRONTENDS-1 */
};

ROAM_MAP(roam_srv6_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct srv6_config, 0);

/* roam's locators (every cluster's prefix): the only SIDs a segment list may name, and the only sources a SID accepts. */
ROAM_MAP(roam_srv6_locators, BPF_MAP_TYPE_LPM_TRIE, SRV6_LOCATORS_MAX, struct lpm6_key, __u32, BPF_F_NO_PREALLOC);

ROAM_MAP(roam_srv6_stats, BPF_MAP_TYPE_PERCPU_ARRAY, MAX_FRONTENDS * SRV6_STAT_MAX, __u32, struct counter, 0);

/*
 * Until when (CLOCK_MONOTONIC ns, bpf_ktime_get_coarse_ns) a frontend's
 * previous SRv6 path still takes its open connections after a move back
 * home (srv6_previous), by frontend id; 0: not at all. Go writes it at
 * every commit: the commit's time plus SRv6Config.PreviousHold when it
 * moves the frontend from an SRv6 path to local, else 0 (a later commit
 * ends it).
 */
ROAM_MAP(roam_srv6_prev, BPF_MAP_TYPE_ARRAY, MAX_FRONTENDS, __u32, __u64, 0);

/* Copies on this node of frontends redirected by SRv6, keyed by the frontend (the inner destination). */
ROAM_MAP(roam_srv6_local, BPF_MAP_TYPE_HASH, MAX_FRONTENDS, struct frontend_key, struct srv6_local, 0);

/* Flows delivered to a local copy (inner client -> frontend): last packet, CLOCK_MONOTONIC coarse. */
ROAM_MAP(roam_srv6_flows, BPF_MAP_TYPE_LRU_HASH, SRV6_FLOWS_MAX, struct ct_key, __u64, 0);

/*
 * The home's flows (client -> frontend) it encapsulated a packet of larger
 * than IPv6's minimum MTU, 1280 (srv6_note_big): the only packets a
 * router's packet too big can be about, since one reporting less is
 * refused. A fixed array of SRV6_BIG_SLOTS timestamps (the last such
 * packet, CLOCK_MONOTONIC coarse), indexed by a hash of the flow's key
 * (srv6_big_slot): no entry is ever evicted and no insert takes a lock, so
 * a flood of big packets from forged sources can only refresh slots, never
 * push a real client's flow out (an LRU hash of flows could: its too-bigs
 * were then refused, a path MTU black hole, and every insert into the full
 * map ran the LRU's eviction on the XDP path). A flow that shares its slot
 * with a fresh one passes for fresh: a forged too-big about it is let
 * through, as about any flow while a flood keeps every slot fresh; both
 * within the ICMP budget and the path check (srv6_ptb_ours), and a
 * too-big relayed reports at least 1280 less the encapsulation.
 * srv6_relay_ptb relays a too-big only about a flow whose slot was noted
 * within SRV6_BIG_FLOW_NS. Not pinned: after a restart a flow is known
 * again from its next big packet (a too-big refused meanwhile is sent
 * again by the router when the client sends that packet again).
 */
#ifndef SRV6_BIG_SLOTS
#define SRV6_BIG_SLOTS (1u << 18) /* a power of two */
#endif
#ifndef SRV6_BIG_FLOW_NS
#define SRV6_BIG_FLOW_NS (10ULL * 1000000000ULL)
#endif
ROAM_LOCAL_MAP(roam_srv6_big, BPF_MAP_TYPE_ARRAY, SRV6_BIG_SLOTS, __u32, __u64, 0);

/* srv6_big_slot is k's slot in roam_srv6_big: FNV-1a over the addresses, ports, protocol and family. */
static __always_inline __u32 srv6_big_slot(const struct ct_key *k)
{
	__u32 w[9];
	__builtin_memcpy(w, k, 36); /* saddr, daddr, sport, dport */
	__u32 h = 2166136261u;
#pragma unroll
	for (int i = 0; i < 9; i++)
		h = (h ^ w[i]) * 16777619u;
	h = (h ^ ((__u32)k->proto << 8 | k->family)) * 16777619u;
	h ^= h >> 15;
	return h & (SRV6_BIG_SLOTS - 1);
}

/* srv6_big_seen is k's slot's last big packet (0: none; NULL only if the array lookup failed). */
static __always_inline __u64 *srv6_big_seen(const struct ct_key *k)
{
	__u32 slot = srv6_big_slot(k);
	return bpf_map_lookup_elem(&roam_srv6_big, &slot);
}

/* srv6_note_big notes p's flow in roam_srv6_big when its encapsulation is `len` bytes, more than 1280 (k: a key's room, per-CPU scratch). */
static __always_inline void srv6_note_big(const struct pkt *p, __u32 len, struct ct_key *k)
{
	if (len <= IPV6_MIN_MTU)
		return;
	ct_key_from_pkt(k, p);
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 *seen = srv6_big_seen(k);
	if (seen && *seen != now)
		*seen = now;
}

/* A reply srv6_input found for srv6_decap_reply (each its own stack frame, both called from the entry). */
struct srv6_reply {
	__u32 id;    /* the frontend's */
	__u32 wire;  /* frame length as received */
	__u8 n;	     /* segments */
	__u8 family; /* inner */
	__u16 pad;
};

/*
 * Per-CPU scratch of srv6_input and srv6_decap_reply (a BPF stack has 512
 * bytes for the entry and one subprogram together; the entry's frame is
 * the NAT path's, so nothing of SRv6 lives in it): the reply srv6_input
 * found, and the packet and translation of its decapsulation.
 */
struct srv6_scratch {
	struct srv6_reply r;
	struct pkt p;
	struct xlate x;
	struct eth_hdr eth; /* srv6_push: the frame's Ethernet header, moved in front of the encapsulation */
	__u16 pad;
	__u32 out, mtu, pod; /* srv6_nexthop: nh_lookup's egress, MTU and pod flag */
	struct ct_key big;   /* srv6_push: srv6_note_big's key */
};

ROAM_LOCAL_MAP(roam_srv6_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct srv6_scratch, 0);

static __always_inline void srv6_count(__u32 id, __u32 stat, __u64 bytes)
{
	count_row(&roam_srv6_stats, id, stat, SRV6_STAT_MAX, bytes);
}

static __always_inline int srv6_in_locators(const __u8 *addr)
{
	struct lpm6_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&roam_srv6_locators, &k) != NULL;
}

/* srv6_flowlabel hashes the 5-tuple into the outer flow label (RFC 6437), so ECMP keeps a flow on one path. */
static __always_inline __u32 srv6_flowlabel(const struct pkt *p)
{
	const __u32 *w = (const __u32 *)p->saddr; /* saddr, daddr, ports: 9 words */
	__u32 h = 2166136261u ^ p->proto;
#pragma unroll
	for (int i = 0; i < 9; i++)
		h = (h ^ w[i]) * 16777619u;
	h ^= h >> 15;
	h ^= h >> 20;
	return h & 0xfffff;
}

/*
 * srv6_previous: a TCP packet of an open connection (no SYN) with no flow
 * pinned here, to a frontend whose active target is local (sc->svc: its
 * key, as active_target left it) while the other slot still holds the
 * SRv6 path it was committed from (its slot_gen 0: the previous target,
 * not a staged one), and only until roam_srv6_prev's time for it. That is
 * a move back home: the connection was opened along that path, at a copy
 * abroad that now drains (the local copy's own connections are pinned by
 * conntrack from their SYN). Keep sending it there: sc->t set to that path
 * and sc->id to id (the frontend's), 1 returned; else 0. Bounded, because
 * a connection of the local copy that lost its conntrack entry (GC, or
 * ct_full at its SYN) and whose socket this host cannot see (a pod's)
 * looks the same, and once the old copy is gone it belongs here.
 */
static __always_inline int srv6_previous(__u32 id)
{
	__u64 *until = bpf_map_lookup_elem(&roam_srv6_prev, &id);
	if (!until || bpf_ktime_get_coarse_ns() >= *until)
		return 0;
	struct scratch *sc = scratch();
	if (!sc)
		return 0;
	__u32 *idp = bpf_map_lookup_elem(&roam_services, &sc->svc);
	if (!idp)
		return 0;
	struct service *svc = bpf_map_lookup_elem(&roam_service_slots, idp);
	if (!svc)
		return 0;
	__u32 other = (*(volatile __u32 *)&svc->active & 1) ^ 1;
	if (svc->slot_gen[other] != 0 || svc->slot[other].kind != TARGET_SRV6)
		return 0;
	__builtin_memcpy(&sc->t, &svc->slot[other], sizeof(sc->t));
	sc->id = id;
	return 1;
}

#endif /* SRV6_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef SRV6_PROG_H
#define SRV6_PROG_H

#ifdef ROAM_XDP
/*
 * srv6_clamp_mss lowers the MSS option of a TCP SYN (or SYN-ACK) to max
 * (the path MTU less the largest encapsulation and the inner headers),
 * fixing the checksum. It walks at most 10 options, as a SYN carries few.
 */
static __always_inline void srv6_clamp_mss(struct xdp_md *ctx, const struct pkt *p, __u16 max)
{
	if (!max || p->proto != IPPROTO_TCP_ || !(p->tcp_flags & TCP_FLAG_SYN))
		return;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcp_hdr *th = data + (p->family == FAMILY_V4 ? L4_OFF4 : L4_OFF6);
	if ((void *)(th + 1) > data_end)
		return;
	__u32 optlen = (th->doff_res >> 4) * 4 - sizeof(*th);
	__u8 *opt = (__u8 *)(th + 1);
	__u32 off = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < 10; i++) {
		if (off + 4 > optlen)
			return;
		off &= 0x3f;
		__u8 *o = opt + off;
		if ((void *)(o + 4) > data_end)
			return;
		if (o[0] == 0) /* end of options */
			return;
		if (o[0] == 1) { /* NOP */
			off++;
			continue;
		}
		if (o[0] == 2 && o[1] == 4) {
			__u16 mss = (__u16)o[2] << 8 | o[3];
			if (mss <= max)
				return;
			__u16 old, new;
			__builtin_memcpy(&old, o + 2, 2);
			o[2] = max >> 8;
			o[3] = max & 0xff;
			__builtin_memcpy(&new, o + 2, 2);
			__u32 diff = csum_diff16(&old, &new, 1);
			if (off & 1) {
				/* At an odd offset the value straddles two checksum words: its sum is byte-swapped. */
				diff = (diff & 0xffff) + (diff >> 16);
				diff = (diff & 0xffff) + (diff >> 16);
				diff = ((diff & 0xff) << 8) | ((diff >> 8) & 0xff);
			}
			csum_update_l4(&th->check, IPPROTO_TCP_, p->family, diff);
			srv6_count(0, SRV6_STAT_MSS, 0);
			return;
		}
		if (o[1] < 2)
			return;
		off += o[1];
	}
}

/* An inner packet's flow, read from behind the SRH. */
struct srv6_inner {
	struct ct_key k; /* client -> frontend */
	__u8 tcp_flags;
	__u8 ok;	  /* TCP or UDP, headers complete */
	__u16 pad;
};

/*
 * Per-CPU scratch of srv6_relay_ptb (its frame adds to the entry's and
 * srv6_input's), whose route lookup srv6_nexthop uses too (another
 * packet's: never at once). Its value has a size, not a type: bpf2go cannot write
 * bpf_fib_lookup's anonymous unions as Go.
 */
struct srv6_ptb_scratch {
	struct bpf_fib_lookup fib;
	struct srv6_inner in;
	struct frontend_key fk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct srv6_ptb_scratch));
} roam_srv6_ptb_scratch SEC(".maps");

/*
 * srv6_nexthop finds the next hop of the outer packet srv6_push is about
 * to write (from this node's SID to the first segment, tot_len bytes)
 * through the next-hop cache (nexthop.h), keyed by the outer addresses
 * and the ingress interface: a path's packets pay bpf_fib_lookup about
 * once a second, as NAT's do, not each (an IPv6 lookup with its MTU
 * check was most of an encapsulation's cost). The frame's MAC addresses
 * are written before the encapsulation moves them (srv6_push keeps the
 * Ethernet header). As NAT's, the cache is keyed without the flow: the
 * first hop out of this node is chosen per path, not per flow (the outer
 * flow label still spreads flows over ECMP further on). Returns
 * nh_lookup's code (sc->out the egress; sc->mtu the MTU a
 * BPF_FIB_LKUP_RET_FRAG_NEEDED names);
 * an egress that is a local pod's veth: BPF_FIB_LKUP_RET_NOT_FWDED (an
 * underlay never is one), so the packet goes up to the kernel, which
 * forwards it: as for NAT (xdp.c), a veth drops a frame redirected into it
 * unless its peer runs XDP or GRO (before the cache it was redirected).
 */
static __always_inline long srv6_nexthop(struct xdp_md *ctx, struct srv6_scratch *sc, const __u8 *saddr,
					 const __u8 *daddr, __u32 tot_len)
{
	__u32 zero = 0;
	__builtin_memset(&sc->p, 0, sizeof(sc->p));
	sc->p.family = FAMILY_V6;
	sc->p.proto = IPPROTO_ROUTING_;
	sc->p.ip_len = tot_len;
	__builtin_memcpy(sc->x.src, saddr, 16);
	__builtin_memcpy(sc->x.dst, daddr, 16);
	sc->x.sport = 0;
	sc->x.dport = 0;
	sc->out = sc->mtu = sc->pod = 0;
	struct srv6_ptb_scratch *fs = bpf_map_lookup_elem(&roam_srv6_ptb_scratch, &zero);
	if (!fs)
		return -1;
	long rc = nh_lookup_in(ctx, &sc->p, &sc->x, ctx->ingress_ifindex, bpf_ktime_get_coarse_ns(), &sc->out, &sc->mtu,
			       &sc->pod, &fs->fib);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && sc->pod)
		return BPF_FIB_LKUP_RET_NOT_FWDED;
	return rc;
}

/*
 * srv6_send sends the (outer IPv6) packet at ctx, its MAC addresses
 * written, as srv6_nexthop found (rc, egress out): XDP_TX on the same
 * interface, redirect to another; no neighbour, or not forwardable here:
 * to the kernel; too big: dropped.
 */
static __always_inline int srv6_send(struct xdp_md *ctx, long rc, __u32 out)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		if (out == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(out, 0);
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		count_reason(REASON_NO_NEIGH);
		return XDP_PASS;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return XDP_PASS;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		count_reason(REASON_SRV6_TOO_BIG);
		return XDP_DROP;
	}
	count_reason(REASON_NO_ROUTE); /* no route, or forwarding off here (BPF_FIB_LKUP_RET_FWD_DISABLED) */
	return XDP_DROP;
}

/* srv6_xmit sends the (outer IPv6) packet at ctx to daddr (End: on to the next segment). */
static __always_inline int srv6_xmit(struct xdp_md *ctx, const __u8 *saddr, const __u8 *daddr, __u32 tot_len)
{
	__u32 zero = 0;
	struct srv6_scratch *sc = bpf_map_lookup_elem(&roam_srv6_scratch, &zero);
	if (!sc)
		return XDP_PASS;
	long rc = srv6_nexthop(ctx, sc, saddr, daddr, tot_len);
	if (rc < 0)
		return XDP_DROP;
	return srv6_send(ctx, rc, sc->out);
}

/*
 * srv6_push encapsulates the packet at ctx (parsed into p) along t's n
 * segments and sends it (H.Encaps). The route comes first
 * (srv6_nexthop), with the encapsulated length: a packet that would not
 * fit is still the client's, and is answered with an ICMP "fragmentation
 * needed" / ICMPv6 "packet too big" carrying the path's MTU less the
 * encapsulation (RFC 8754 section 5.3), so the client sends smaller
 * packets; counted as srv6_too_big. No neighbour yet, or not
 * forwardable: to the kernel, encapsulated (it resolves the neighbour).
 */
static __always_inline int srv6_push(struct xdp_md *ctx, const struct pkt *p, const struct target *t,
				     const struct srv6_config *cfg, struct srv6_scratch *sc, __u32 id, const __u32 n)
{
	__u32 inner_len = p->ip_len;
	long rc = srv6_nexthop(ctx, sc, cfg->sid, t->sids[0], SRV6_OVERHEAD(n) + inner_len);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		__u32 mtu = sc->mtu;
		count_reason(REASON_SRV6_TOO_BIG);
		count_action(id, ACTION_DROP, p->len);
		return icmp_too_big(ctx, mtu > SRV6_OVERHEAD(n) ? mtu - SRV6_OVERHEAD(n) : 0);
	}
	if (rc < 0)
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(struct eth_hdr) > data_end)
		return XDP_DROP;
	__builtin_memcpy(&sc->eth, data, sizeof(sc->eth)); /* the next hop's MAC addresses, if found */
	srv6_note_big(p, SRV6_OVERHEAD(n) + inner_len, &sc->big);
	__u8 inner_nh = p->family == FAMILY_V4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
	if (bpf_xdp_adjust_head(ctx, -(int)SRV6_OVERHEAD(n)) < 0) {
		count_reason(REASON_MALFORMED);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *e = data;
	struct ip6_hdr *ip6 = data + L3_OFF;
	struct srh *srh = (struct srh *)(ip6 + 1);
	__u8 *segs = (__u8 *)(srh + 1);
	if ((void *)(segs + 16 * n) > data_end)
		return XDP_DROP;
	__builtin_memcpy(e, &sc->eth, sizeof(*e));
	e->proto = bpf_htons(ETH_P_IPV6_);
	ip6->vtc_flow = bpf_htonl(0x60000000 | srv6_flowlabel(p));
	ip6->payload_len = bpf_htons(SRH_LEN(n) + inner_len);
	ip6->nexthdr = IPPROTO_ROUTING_;
	ip6->hop_limit = SRV6_HOP_LIMIT;
	__builtin_memcpy(ip6->saddr, cfg->sid, 16);
	__builtin_memcpy(ip6->daddr, t->sids[0], 16);
	srh->nexthdr = inner_nh;
	srh->hdrlen = 2 * n;
	srh->type = SRH_TYPE_SEG6;
	srh->segments_left = n - 1;
	srh->last_entry = n - 1;
	srh->flags = 0;
	srh->tag = 0;
	/* Reverse order: segs[0] is the last segment. */
#pragma unroll
	for (__u32 i = 0; i < n; i++)
		__builtin_memcpy(segs + 16 * i, t->sids[n - 1 - i], 16);
	srv6_count(id, SRV6_STAT_ENCAP, p->len);
	count_action(id, ACTION_REDIRECT, p->len);
	return srv6_send(ctx, rc, sc->out);
}

/*
 * srv6_encap: a new packet of a frontend whose active target is the SRv6
 * path t (id: the frontend's). Not inlined: its own stack frame.
 */
static __noinline int srv6_encap(struct xdp_md *ctx, struct pkt *p, const struct target *t, __u32 id)
{
	__u32 zero = 0;
	struct srv6_config *cfg = bpf_map_lookup_elem(&roam_srv6_config, &zero);
	if (!cfg || !cfg->has_sid) {
		count_reason(REASON_NO_CONFIG);
		count_action(id, ACTION_DROP, p->len);
		return XDP_DROP;
	}
	struct srv6_scratch *sc = bpf_map_lookup_elem(&roam_srv6_scratch, &zero);
	if (!sc)
		return XDP_PASS;
	srv6_clamp_mss(ctx, p, p->family == FAMILY_V4 ? cfg->mss4 : cfg->mss6);
	if (t->nsegs == 1)
		return srv6_push(ctx, p, t, cfg, sc, id, 1);
	if (t->nsegs == 2)
		return srv6_push(ctx, p, t, cfg, sc, id, 2);
	count_reason(REASON_SRV6_BAD_SRH);
	count_action(id, ACTION_DROP, p->len);
	return XDP_DROP;
}


/* srv6_parse_inner reads the inner packet's tuple at off (nh: 4 or 41). Returns 0, or -1 if the inner packet is not IP. */
static __always_inline int srv6_parse_inner(void *data, void *data_end, __u32 off, __u8 nh, struct srv6_inner *in)
{
	__u32 l4;
	__u8 proto;
	if (nh == IPPROTO_IPIP_) {
		struct ip4_hdr *iph = data + off;
		if ((void *)(iph + 1) > data_end || (iph->ver_ihl >> 4) != 4)
			return -1;
		addr_from_v4(in->k.saddr, iph->saddr);
		addr_from_v4(in->k.daddr, iph->daddr);
		in->k.family = FAMILY_V4;
		proto = iph->protocol;
		if ((iph->ver_ihl & 0x0f) != 5 || (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)))
			proto = 0; /* options or a fragment: not a flow we can key */
		l4 = off + sizeof(*iph);
	} else if (nh == IPPROTO_IPV6_) {
		struct ip6_hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end || (bpf_ntohl(ip6->vtc_flow) >> 28) != 6)
			return -1;
		__builtin_memcpy(in->k.saddr, ip6->saddr, 16);
		__builtin_memcpy(in->k.daddr, ip6->daddr, 16);
		in->k.family = FAMILY_V6;
		proto = ip6->nexthdr;
		l4 = off + sizeof(*ip6);
	} else {
		return -1;
	}
	in->k.proto = proto;
	if (proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = data + l4;
		if ((void *)(th + 1) > data_end)
			return 0;
		in->k.sport = th->source;
		in->k.dport = th->dest;
		in->tcp_flags = th->flags;
		in->ok = 1;
	} else if (proto == IPPROTO_UDP_) {
		struct udp_hdr *uh = data + l4;
		if ((void *)(uh + 1) > data_end)
			return 0;
		in->k.sport = uh->source;
		in->k.dport = uh->dest;
		in->ok = 1;
	}
	return 0;
}

/* srv6_strip removes the outer IPv6 header and SRH of n segments, keeping the Ethernet header (End.DX4/End.DX6). */
static __always_inline int srv6_strip(struct xdp_md *ctx, __u8 inner_family, const __u32 n)
{
	struct eth_hdr eth;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(eth) > data_end)
		return -1;
	__builtin_memcpy(&eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, (int)SRV6_OVERHEAD(n)) < 0)
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *e = data;
	if ((void *)(e + 1) > data_end)
		return -1;
	__builtin_memcpy(e, &eth, sizeof(eth));
	e->proto = bpf_htons(inner_family == FAMILY_V4 ? ETH_P_IP_ : ETH_P_IPV6_);
	return 0;
}

/* srv6_flow_known: a draining copy keeps this packet's flow (delivered here before, and not a new TCP connection). */
static __always_inline int srv6_flow_known(struct xdp_md *ctx, const struct srv6_inner *in)
{
	if (in->k.proto == IPPROTO_TCP_) {
		if ((in->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return 0; /* a new connection: the next location's */
		if (bpf_map_lookup_elem(&roam_srv6_flows, &in->k))
			return 1;
		/* Not seen by us (say, opened before the agent restarted): a socket of this host has it. */
		/* A ct_key starts as a struct pkt does (addresses, ports, proto, family): what sock_tuple reads. */
		return host_socket_owns(ctx, (const struct pkt *)&in->k);
	}
	__u64 *seen = bpf_map_lookup_elem(&roam_srv6_flows, &in->k);
	if (!seen)
		return 0;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	return cfg && !idle_longer(bpf_ktime_get_coarse_ns(), *seen, cfg->udp_drain_ns);
}

#define SRV6_CONTINUE (-1) /* srv6_input: not for this node's SID */
#define SRV6_DECAP (-2)	   /* srv6_input: a reply to decapsulate, as struct srv6_reply says */
#define SRV6_PTB (-3)	   /* srv6_input: ICMPv6, for srv6_relay_ptb (called from the entry: a third frame would not fit) */

/* srv6_decap_reply sends a reply (decapsulated) to the client. Not inlined: its own stack frame. */
static __noinline int srv6_decap_reply(struct xdp_md *ctx)
{
	/* The reply, the packet and its (identity) translation live in per-CPU scratch: this frame adds to the entry's. */
	__u32 zero = 0;
	struct srv6_scratch *sc = bpf_map_lookup_elem(&roam_srv6_scratch, &zero);
	if (!sc)
		return XDP_PASS;
	__u32 id = sc->r.id, wire = sc->r.wire;
	int rc = sc->r.n == 1 ? srv6_strip(ctx, sc->r.family, 1) : srv6_strip(ctx, sc->r.family, 2);
	if (rc < 0) {
		count_reason(REASON_MALFORMED);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__builtin_memset(&sc->p, 0, sizeof(sc->p));
	if (parse_packet(data, data_end, (__u32)(data_end - data), &sc->p) != PARSE_OK)
		return XDP_PASS; /* the kernel judges it */
	/* The copy's SYN-ACK: its MSS too, so the client's segments fit the encapsulation on their way in. */
	struct srv6_config *cfg = bpf_map_lookup_elem(&roam_srv6_config, &zero);
	if (cfg)
		srv6_clamp_mss(ctx, &sc->p, sc->p.family == FAMILY_V4 ? cfg->mss4 : cfg->mss6);
	srv6_count(id, SRV6_STAT_DECAP, wire);
	/* No rewrite: the copy answered from the frontend, to the client. */
	__builtin_memcpy(sc->x.src, sc->p.saddr, 16);
	__builtin_memcpy(sc->x.dst, sc->p.daddr, 16);
	sc->x.sport = sc->p.sport;
	sc->x.dport = sc->p.dport;
	sc->x.id = id;
	sc->x.action = ACTION_REVERSE;
	return roam_xmit(ctx, &sc->p, &sc->x, bpf_ktime_get_coarse_ns());
}

/* srv6_at_sid handles a packet to this node's SID whose SRH holds n segments. */
static __always_inline int srv6_at_sid(struct xdp_md *ctx, struct srv6_reply *r, const __u8 *sid, const __u32 n)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ip6_hdr *ip6 = data + L3_OFF;
	struct srh *srh = (struct srh *)(ip6 + 1);
	__u8 *segs = (__u8 *)(srh + 1);
	if ((void *)(segs + 16 * n) > data_end) {
		count_reason(REASON_SRV6_BAD_SRH);
		return XDP_DROP;
	}
	/* RFC 8986 section 9.3: every segment must be one of roam's (this node's SID is: Go refuses locators without it). */
#pragma unroll
	for (__u32 i = 0; i < n; i++) {
		if (!addr_eq(segs + 16 * i, sid) && !srv6_in_locators(segs + 16 * i)) {
			count_reason(REASON_SRV6_FOREIGN_SID);
			return XDP_DROP;
		}
	}
	/*
	 * The destination is this node's SID (srv6_input); the segment at
	 * segments_left, the active one (RFC 8754 section 4.3), must be too:
	 * a packet whose list names another node here (a reply to another
	 * node of the home, a path through another node of the location) is
	 * not this node's to decapsulate, deliver or forward.
	 */
	const __u8 *active = segs;
	if (n == 2 && srh->segments_left == 1)
		active = segs + 16;
	if (!addr_eq(active, sid)) {
		count_reason(REASON_SRV6_BAD_SRH);
		return XDP_DROP;
	}
	__u32 wire = (__u32)(data_end - data);
	struct srv6_inner in = {};
	if (srv6_parse_inner(data, data_end, L3_OFF + SRV6_OVERHEAD(n), srh->nexthdr, &in) < 0) {
		count_reason(REASON_SRV6_BAD_SRH);
		return XDP_DROP;
	}
	__u8 sl = srh->segments_left;
	__u32 local_id = 0;
	int deliver = 0;
	if (in.ok) {
		struct frontend_key fk = {};
		__builtin_memcpy(fk.addr, in.k.daddr, 16);
		fk.port = in.k.dport;
		fk.proto = in.k.proto;
		fk.family = in.k.family;
		struct srv6_local *loc = bpf_map_lookup_elem(&roam_srv6_local, &fk);
		if (loc) {
			local_id = loc->id;
			if (loc->state == SRV6_SERVING || (loc->state == SRV6_DRAINING && (sl == 0 || srv6_flow_known(ctx, &in))))
				deliver = 1;
		}
	}
	if (deliver) {
		__u64 now = bpf_ktime_get_coarse_ns();
		__u64 *seen = bpf_map_lookup_elem(&roam_srv6_flows, &in.k);
		if (seen) {
			if (*seen != now)
				*seen = now;
		} else {
			bpf_map_update_elem(&roam_srv6_flows, &in.k, &now, BPF_ANY);
		}
		if (srv6_strip(ctx, in.k.family, n) < 0) {
			count_reason(REASON_MALFORMED);
			return XDP_DROP;
		}
		srv6_count(local_id, SRV6_STAT_DELIVER, wire);
		return XDP_PASS;
	}
	if (sl > 0) {
		/* End: on to the next segment. */
		if (ip6->hop_limit <= 1)
			return XDP_PASS; /* the kernel answers Time Exceeded */
		ip6->hop_limit--;
		sl--;
		srh->segments_left = sl;
		__u8 *next = segs + 16 * (sl & 1);
		if ((void *)(next + 16) > data_end)
			return XDP_DROP;
		__builtin_memcpy(ip6->daddr, next, 16);
		srv6_count(local_id, SRV6_STAT_FORWARD, wire);
		return srv6_xmit(ctx, ip6->saddr, ip6->daddr, sizeof(*ip6) + bpf_ntohs(ip6->payload_len));
	}
	/* The last segment, no copy here: a reply to one of our frontends (from its abroad copy) goes to the client. */
	if (in.ok) {
		struct frontend_key fk = {};
		__builtin_memcpy(fk.addr, in.k.saddr, 16);
		fk.port = in.k.sport;
		fk.proto = in.k.proto;
		fk.family = in.k.family;
		__u32 *id = bpf_map_lookup_elem(&roam_services, &fk);
		if (id) {
			r->id = *id;
			r->wire = wire;
			r->n = n;
			r->family = in.k.family;
			return SRV6_DECAP;
		}
	}
	count_reason(REASON_SRV6_NO_COPY);
	return XDP_DROP;
}


/*
 * srv6_ptb_ours: the quoted SRH (at srh, after the quoted outer header q)
 * is one this node writes for one of svc's slots: an SRv6 path of as many
 * segments, the same segments (an SRH lists them last first), and the
 * quoted outer destination the segment at the quoted segments_left (a
 * router after an End hop quotes the packet as that hop rewrote it).
 */
static __always_inline int srv6_ptb_ours(void *data, void *data_end, struct ip6_hdr *q, struct srh *srh,
					 struct service *svc)
{
	__u8 *segs = (__u8 *)(srh + 1);
	__u32 n = (__u32)srh->last_entry + 1, sl = srh->segments_left;
	if (sl >= n || (void *)(segs + 16 * SRV6_MAX_SEGS) > data_end)
		return 0; /* an SRH of ours is followed by at least a client's headers */
	if (!(sl == 0 ? addr_eq(q->daddr, segs) : addr_eq(q->daddr, segs + 16)))
		return 0; /* constant offsets: the verifier keeps the packet's bounds */
	for (int i = 0; i < 2; i++) {
		struct target *t = &svc->slot[i];
		if (t->kind != TARGET_SRV6 || t->nsegs != n)
			continue;
		if (n == 1 && addr_eq(segs, t->sids[0]))
			return 1;
		if (n == 2 && addr_eq(segs, t->sids[1]) && addr_eq(segs + 16, t->sids[0]))
			return 1;
	}
	return 0;
}

/*
 * srv6_ptb_mtu: the MTU to tell the client when the underlay reported
 * `reported` (at least IPv6's minimum, 1280) for an encapsulation of `over`
 * bytes: reported - over, no more than 65535 (no jumbograms; IPv4's field
 * is 16 bits: a larger value is not cut to its low bits). IPv4: no lower
 * than 68 (RFC 791's minimum; with reported >= 1280 it is at least 1200).
 * IPv6: no lower than 1280, IPv6's minimum, which a client cannot go under:
 * with an underlay under 1280 + over, packets of 1280 still do not fit
 * once encapsulated (they get the home's srv6_too_big, or are lost).
 */
static __always_inline __u32 srv6_ptb_mtu(__u32 reported, __u32 over, int v4)
{
	__u32 mtu = reported > over ? reported - over : 0;
	if (mtu > 65535)
		mtu = 65535;
	__u32 floor = v4 ? 68 : IPV6_MIN_MTU;
	return mtu < floor ? floor : mtu;
}

/*
 * srv6_relay_ptb: an ICMPv6 packet too big to this node's SID quoting a
 * packet it encapsulated (our outer IPv6 header from our SID, our SRH of n
 * segments, then the packet of a client to one of our frontends) is the
 * underlay's word that the path is narrower than the encapsulation: the
 * client must send smaller packets. It is relayed to the client as its
 * own family's too-big (IPv4 "fragmentation needed", ICMPv6 "packet too
 * big") about its packet, from the frontend, with the underlay's MTU less
 * the encapsulation (srv6_ptb_mtu), routed to the client (to the kernel: a
 * sender on this host, or no neighbour yet); counted as srv6_ptb_relayed.
 * Anyone can send our SID a packet too big and forge its quote, so it is
 * relayed only if the quote is a packet we would send: one of the
 * frontend's two slots (active, or staged / previous) an SRv6 path whose
 * segments are the quoted SRH's and whose segment at the quoted
 * segments_left is the quoted outer destination; and the reported MTU is
 * at least IPv6's minimum (RFC 8201 section 4: a packet too big below 1280
 * is discarded, not clamped). Otherwise dropped, counted srv6_ptb_refused.
 * A relay takes a token of the ICMP budget (icmp_allow; none left: dropped,
 * counted icmp_limited). The quoted flow must be one the home carries:
 * noted in roam_srv6_big (a packet of it encapsulated bigger than 1280,
 * the smallest MTU a relayed too-big can report, within
 * SRV6_BIG_FLOW_NS); else refused too. A quote of no frontend of ours:
 * SRV6_CONTINUE (the NAT path's ICMP, or the kernel's). Not inlined: rare,
 * off the per-packet path.
 */
static __noinline int srv6_relay_ptb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ip6_hdr *ip6 = data + L3_OFF;
	struct icmp_hdr *ic = data + L4_OFF6;
	struct ip6_hdr *q = data + ICMP6_IN_L3;
	struct srh *srh = (struct srh *)(q + 1);
	if ((void *)(srh + 1) > data_end || ic->type != ICMPV6_PKT_TOOBIG || ic->code != 0)
		return SRV6_CONTINUE;
	__u32 zero = 0;
	struct srv6_config *cfg = bpf_map_lookup_elem(&roam_srv6_config, &zero);
	if (!cfg || !cfg->has_sid || !addr_eq(ip6->daddr, cfg->sid) || !addr_eq(q->saddr, cfg->sid) ||
	    q->nexthdr != IPPROTO_ROUTING_)
		return SRV6_CONTINUE;
	if (srh->type != SRH_TYPE_SEG6 || srh->last_entry >= SRV6_MAX_SEGS || srh->hdrlen != 2 * (srh->last_entry + 1) ||
	    (srh->nexthdr != IPPROTO_IPIP_ && srh->nexthdr != IPPROTO_IPV6_))
		return SRV6_CONTINUE; /* not an encapsulation of ours */
	__u32 over = SRV6_OVERHEAD((__u32)srh->last_entry + 1);
	__u32 strip = sizeof(struct ip6_hdr) + sizeof(struct icmp_hdr) + over; /* up to the client's packet */
	int v4 = srh->nexthdr == IPPROTO_IPIP_;
	__u32 reported = bpf_ntohl(ic->rest);
	struct srv6_ptb_scratch *sc = bpf_map_lookup_elem(&roam_srv6_ptb_scratch, &zero);
	if (!sc)
		return SRV6_CONTINUE;
	struct srv6_inner *in = &sc->in;
	__builtin_memset(in, 0, sizeof(*in));
	/* A constant offset per segment count: the verifier follows the inner headers' bounds. */
	int prc = srh->last_entry == 0 ? srv6_parse_inner(data, data_end, L3_OFF + 48 + SRV6_OVERHEAD(1), srh->nexthdr, in)
				       : srv6_parse_inner(data, data_end, L3_OFF + 48 + SRV6_OVERHEAD(2), srh->nexthdr, in);
	if (prc < 0 || !in->ok)
		return SRV6_CONTINUE;
	struct frontend_key *fk = &sc->fk;
	__builtin_memset(fk, 0, sizeof(*fk));
	__builtin_memcpy(fk->addr, in->k.daddr, 16);
	fk->port = in->k.dport;
	fk->proto = in->k.proto;
	fk->family = in->k.family;
	__u32 *id = bpf_map_lookup_elem(&roam_services, fk);
	if (!id)
		return SRV6_CONTINUE; /* no frontend of ours (any more) */
	struct service *svc = bpf_map_lookup_elem(&roam_service_slots, id);
	if (!svc || reported < IPV6_MIN_MTU || !srv6_ptb_ours(data, data_end, q, srh, svc)) {
		count_reason(REASON_SRV6_PTB_REFUSED);
		return XDP_DROP;
	}
	/* The quoted flow: one the home sent a packet bigger than 1280 of, lately (srv6_note_big). */
	__u64 *big = srv6_big_seen(&in->k);
	if (!big || !*big || bpf_ktime_get_coarse_ns() - *big > SRV6_BIG_FLOW_NS) {
		count_reason(REASON_SRV6_PTB_REFUSED);
		return XDP_DROP;
	}
	if (!icmp_allow())
		return XDP_DROP; /* counted icmp_limited */
	__u32 mtu = srv6_ptb_mtu(reported, over, v4);

	/* Keep the Ethernet header, drop everything before the client's packet, and answer it. */
	struct eth_hdr eth;
	if (data + sizeof(eth) > data_end)
		return XDP_DROP;
	__builtin_memcpy(&eth, data, sizeof(eth));
	if (bpf_xdp_adjust_head(ctx, (int)strip) < 0) {
		count_reason(REASON_MALFORMED);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *e = data;
	if ((void *)(e + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(e, &eth, sizeof(eth));
	e->proto = bpf_htons(v4 ? ETH_P_IP_ : ETH_P_IPV6_);
	if (xdp_icmp_error(ctx, ICMP_ERR_TOO_BIG, mtu) != XDP_TX) {
		count_reason(REASON_MALFORMED); /* a quote too short to quote from */
		return XDP_DROP;
	}
	count_reason(REASON_SRV6_PTB_RELAYED);

	/* From the frontend to the client: routed there. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	e = data;
	struct bpf_fib_lookup *fib = &sc->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	if (v4) {
		struct ip4_hdr *ip = data + L3_OFF;
		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		fib->family = AF_INET_;
		fib->l4_protocol = IPPROTO_ICMP_;
		fib->tot_len = bpf_ntohs(ip->tot_len);
		fib->ipv4_src = ip->saddr;
		fib->ipv4_dst = ip->daddr;
	} else {
		struct ip6_hdr *o = data + L3_OFF;
		if ((void *)(o + 1) > data_end)
			return XDP_DROP;
		fib->family = AF_INET6_;
		fib->l4_protocol = IPPROTO_ICMPV6_;
		fib->tot_len = sizeof(*o) + bpf_ntohs(o->payload_len);
		__builtin_memcpy(fib->ipv6_src, o->saddr, 16);
		__builtin_memcpy(fib->ipv6_dst, o->daddr, 16);
	}
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (set_macs(data, data_end, fib) < 0)
			return XDP_DROP;
		if (fib->ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(fib->ifindex, 0);
	}
	/* The kernel's to route (a sender of this host; no neighbour yet): addressed to this interface. */
	__builtin_memcpy(e->dst, e->src, ETH_ALEN_);
	return XDP_PASS;
}

/*
 * srv6_input handles a packet to this node's SID: checks (source and every
 * segment inside roam's locators, an SRH of 1 or 2 segments without TLVs),
 * then delivers or forwards, or returns SRV6_DECAP for a reply (the
 * scratch's r set); for ICMPv6, SRV6_PTB (the entry then calls
 * srv6_relay_ptb).
 * Anything else: SRV6_CONTINUE. Not inlined: its own stack frame, off the
 * NAT path's.
 */
static __noinline int srv6_input(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	struct ip6_hdr *ip6 = data + L3_OFF;
	if ((void *)(ip6 + 1) > data_end || eth->proto != bpf_htons(ETH_P_IPV6_))
		return SRV6_CONTINUE;
	if (ip6->nexthdr == IPPROTO_ICMPV6_)
		return SRV6_PTB; /* perhaps a packet too big about our encapsulation: the entry calls srv6_relay_ptb */
	if (ip6->nexthdr != IPPROTO_ROUTING_)
		return SRV6_CONTINUE;
	__u32 zero = 0;
	struct srv6_config *cfg = bpf_map_lookup_elem(&roam_srv6_config, &zero);
	if (!cfg || !cfg->has_sid || !addr_eq(ip6->daddr, cfg->sid))
		return SRV6_CONTINUE;
	if (!srv6_in_locators(ip6->saddr)) {
		count_reason(REASON_SRV6_FOREIGN_SRC);
		return XDP_DROP;
	}
	struct srh *srh = (struct srh *)(ip6 + 1);
	if ((void *)(srh + 1) > data_end || srh->type != SRH_TYPE_SEG6 || srh->last_entry >= SRV6_MAX_SEGS ||
	    srh->hdrlen != 2 * (srh->last_entry + 1) || srh->segments_left > srh->last_entry ||
	    L3_OFF + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > (__u32)(data_end - data)) {
		count_reason(REASON_SRV6_BAD_SRH);
		return XDP_DROP;
	}
	struct srv6_scratch *sc = bpf_map_lookup_elem(&roam_srv6_scratch, &zero);
	if (!sc)
		return XDP_PASS;
	if (srh->last_entry == 0)
		return srv6_at_sid(ctx, &sc->r, cfg->sid, 1);
	return srv6_at_sid(ctx, &sc->r, cfg->sid, 2);
}

#else /* tc */

/* The headers a tc encapsulation puts in front of the packet's IP header, built on the stack and stored at once. */
struct srv6_hdrs {
	struct eth_hdr eth;
	struct ip6_hdr ip6;
	struct srh srh;
	__u8 segs[16 * SRV6_MAX_SEGS];
} __attribute__((packed));

/* Per-CPU scratch of srv6_encap_skb (the tc entry's frame and icmp_too_big's leave too little stack): its route and headers. */
struct srv6_tc_scratch {
	struct bpf_fib_lookup fib;
	struct srv6_hdrs h;
	struct ct_key big; /* srv6_note_big's key */
};

ROAM_LOCAL_MAP(roam_srv6_tc_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct srv6_tc_scratch, 0);

/*
 * srv6_encap_skb: a packet a local sender (this host, at tc egress; a pod,
 * at its veth's ingress) sends to a frontend whose active target is the
 * SRv6 path t (id: the frontend's): H.Encaps here, as XDP does for a
 * client's. A SYN's MSS is clamped first. The route comes first, with the
 * encapsulated length (a packet the kernel will segment, GSO, is judged by
 * the kernel, tot_len 0): a packet that would not fit is answered with a
 * too-big of the path's MTU less the encapsulation, which the local
 * socket takes in. bpf_skb_adjust_room opens the room with
 * BPF_F_ADJ_ROOM_ENCAP_L3_IPV6: the kernel switches skb->protocol to IPv6
 * and marks a GSO packet SKB_GSO_IPXIP6 with its MSS lowered by the
 * overhead, so it is segmented after the encapsulation, each segment
 * encapsulated and within the MTU. Then out to the next hop (no neighbour:
 * bpf_redirect_neigh resolves it). Not inlined: its own stack frame.
 */
static __noinline int srv6_encap_skb(struct __sk_buff *skb, struct pkt *p, const struct target *t, __u32 id)
{
	__u32 zero = 0;
	struct srv6_config *cfg = bpf_map_lookup_elem(&roam_srv6_config, &zero);
	if (!cfg || !cfg->has_sid) {
		count_reason(REASON_NO_CONFIG);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	__u32 n = t->nsegs;
	if (n != 1 && n != 2) {
		count_reason(REASON_SRV6_BAD_SRH);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	struct srv6_tc_scratch *sc = bpf_map_lookup_elem(&roam_srv6_tc_scratch, &zero);
	if (!sc)
		return TC_ACT_SHOT;
	__u32 over = SRV6_OVERHEAD(n);
	__u32 label = srv6_flowlabel(p);
	struct bpf_fib_lookup *fib = &sc->fib;
	struct srv6_hdrs *h = &sc->h;
	__builtin_memset(fib, 0, sizeof(*fib));
	__builtin_memset(h, 0, sizeof(*h));
	fib->family = AF_INET6_;
	fib->l4_protocol = IPPROTO_ROUTING_;
	fib->tot_len = skb->gso_segs > 1 ? 0 : p->ip_len + over;
	fib->flowinfo = bpf_htonl(label);
	fib->ifindex = skb->ifindex;
	__builtin_memcpy(fib->ipv6_src, cfg->sid, 16);
	__builtin_memcpy(fib->ipv6_dst, t->sids[0], 16);
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		__u32 mtu = fib->mtu_result;
		count_reason(REASON_SRV6_TOO_BIG);
		count_action(id, ACTION_DROP, p->len);
		return icmp_too_big(skb, mtu > over ? mtu - over : 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_NO_ROUTE);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	/* A GSO packet is noted whatever its segments' size (noting a flow too many only lets its too-bigs through). */
	srv6_note_big(p, skb->gso_segs > 1 ? 0xffff : p->ip_len + over, &sc->big);
	__u16 mss = p->family == FAMILY_V4 ? cfg->mss4 : cfg->mss6;
	if (mss && p->proto == IPPROTO_TCP_ && (p->tcp_flags & TCP_FLAG_SYN))
		mss_clamp(skb, p, mss + (p->family == FAMILY_V4 ? 40 : 60));

	__builtin_memcpy(h->eth.dst, fib->dmac, ETH_ALEN_);
	__builtin_memcpy(h->eth.src, fib->smac, ETH_ALEN_);
	h->eth.proto = bpf_htons(ETH_P_IPV6_);
	h->ip6.vtc_flow = bpf_htonl(0x60000000 | label);
	h->ip6.payload_len = bpf_htons(SRH_LEN(n) + p->ip_len);
	h->ip6.nexthdr = IPPROTO_ROUTING_;
	h->ip6.hop_limit = SRV6_HOP_LIMIT;
	__builtin_memcpy(h->ip6.saddr, cfg->sid, 16);
	__builtin_memcpy(h->ip6.daddr, t->sids[0], 16);
	h->srh.nexthdr = p->family == FAMILY_V4 ? IPPROTO_IPIP_ : IPPROTO_IPV6_;
	h->srh.hdrlen = 2 * n;
	h->srh.type = SRH_TYPE_SEG6;
	h->srh.segments_left = n - 1;
	h->srh.last_entry = n - 1;
	/* Reverse order: segs[0] is the last segment. */
	if (n == 1) {
		__builtin_memcpy(h->segs, t->sids[0], 16);
	} else {
		__builtin_memcpy(h->segs, t->sids[1], 16);
		__builtin_memcpy(h->segs + 16, t->sids[0], 16);
	}
	if (bpf_skb_adjust_room(skb, (__s32)over, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6) < 0) {
		count_reason(REASON_SRV6_NO_ENCAP);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	long err = n == 1 ? bpf_skb_store_bytes(skb, 0, h, sizeof(struct eth_hdr) + SRV6_OVERHEAD(1), 0)
			  : bpf_skb_store_bytes(skb, 0, h, sizeof(struct eth_hdr) + SRV6_OVERHEAD(2), 0);
	if (err < 0) {
		count_reason(REASON_MALFORMED);
		count_action(id, ACTION_DROP, p->len);
		return TC_ACT_SHOT;
	}
	srv6_count(id, SRV6_STAT_ENCAP, p->len);
	count_action(id, ACTION_REDIRECT, p->len);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_NO_NEIGH);
		return bpf_redirect_neigh(fib->ifindex, NULL, 0, 0);
	}
	return bpf_redirect(fib->ifindex, 0);
}

#endif /* ROAM_XDP */

#endif /* SRV6_PROG_H */
