/* nat.h: SNAT ports (allocation, takeover of finished flows' ports, release) and the in-place rewrite with checksum updates. */

#include "conntrack.h"
#include "counters.h"
#include "csum.h"
#include "synproxy.h"

#ifndef NAT_H
#define NAT_H

/*
 * SNAT port choice follows RFC 6056's algorithm 4 (double-hash), as
 * Linux's own connect() does: the first slot tried is a per-target offset
 * plus a counter that the target's cursor (roam_snat_cursor) advances at
 * every allocation. Consecutive flows to one target take consecutive
 * slots, so a port comes back to that target only after every other slot
 * of pool x range has been handed out. A hash of the client's side (the
 * earlier choice) lands on a recently freed port by chance (about one new
 * flow in (slots / flows in the last minute)), and the target may still
 * hold that 4-tuple in TIME_WAIT: it answers the SYN with a bare ACK, and
 * the client's connect waits a second for its SYN to be resent.
 */
static __always_inline __u32 target_hash(const struct ct_key *rk)
{
	__u32 w[4];
	__builtin_memcpy(w, rk->saddr, 16);
	__u32 h = 2166136261u;
	h = (h ^ w[0]) * 16777619u;
	h = (h ^ w[1]) * 16777619u;
	h = (h ^ w[2]) * 16777619u;
	h = (h ^ w[3]) * 16777619u;
	h = (h ^ ((__u32)rk->sport << 8 | rk->proto)) * 16777619u;
	h ^= h >> 15;
	return h;
}

/* snat_cursor returns the target's next counter value; a cursor starts at a random value the first time it is used. */
static __always_inline __u32 snat_cursor(__u32 th)
{
	__u32 idx = th & (SNAT_CURSORS - 1);
	__u32 *c = bpf_map_lookup_elem(&roam_snat_cursor, &idx);
	if (!c)
		return 0;
	if (*c == 0)
		__sync_val_compare_and_swap(c, 0, bpf_get_prandom_u32() | 1);
	return __sync_fetch_and_add(c, 1);
}

/*
 * SNAT pools: per family, the first address (config snat4/snat6) and the
 * count-1 addresses after it, counted up in the last 32 bits. A flow's
 * source is one (address, port) of pool x port range, so capacity grows
 * with the pool; a reply is recognised by arithmetic, with no lookup.
 */

/* snat_pool_count is the size of the family's pool (0: no SNAT address). */
static __always_inline __u32 snat_pool_count(const struct config *cfg, __u8 family)
{
	return family == FAMILY_V4 ? (cfg->has_snat4 ? cfg->snat4_count : 0) : (cfg->has_snat6 ? cfg->snat6_count : 0);
}

/* snat_owns: addr:port (port in network order) is a SNAT source of this node: a pool address, a port of the range. */
static __always_inline int snat_owns(const struct config *cfg, __u8 family, const __u8 *addr, __be16 port)
{
	__u16 hp = bpf_ntohs(port);
	if (hp < cfg->port_min || hp > cfg->port_max)
		return 0;
	const __u32 *a = (const __u32 *)addr;
	const __u32 *b = (const __u32 *)(family == FAMILY_V4 ? cfg->snat4 : cfg->snat6);
	if ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]))
		return 0;
	return bpf_ntohl(a[3]) - bpf_ntohl(b[3]) < snat_pool_count(cfg, family);
}

/* nat_reclaimable's verdicts. */
#define RECLAIM_NO 0
#define RECLAIM_EXPIRED 1 /* the flow is over */
#define RECLAIM_EVICT 2	  /* an embryonic flow silent for tcp_syn_evict_ns: it yields its port (a SYN flood's flows) */

/*
 * nat_reclaimable: whether the NAT entry nv (at rk) may go to a new flow:
 * the flow holding it is over in both directions (its forward entry,
 * *owner, set when it still points here, idle in both directions for its
 * state's timeout; embryonic: the client's silence alone), or it is
 * embryonic and neither side has said anything for tcp_syn_evict_ns. Only
 * a new flow whose probe landed on the port asks, so an embryonic flow is
 * evicted only when its port is wanted: a flood of spoofed SYNs holds a
 * port for about tcp_syn_evict_ns, not tcp_syn_ns (netfilter evicts
 * unassured entries first, early_drop, for the same reason). A real
 * client answers the target's SYN-ACK within its round trip. A NAT entry
 * whose forward entry is gone or points elsewhere is reclaimable once it
 * has been idle for the close timeout (a new flow inserts its NAT entry a
 * moment before its forward entry).
 */
static __always_inline int nat_reclaimable(const struct nat_value *nv, const struct ct_key *rk, struct ct_key *owner,
					   __u64 now, const struct config *cfg)
{
	flow_key_of(owner, nv, rk->proto);
	struct ct_value *ov = ct_lookup(owner);
	if (!ov || !nat_belongs(ov, rk)) {
		owner->proto = 0; /* nothing to delete */
		return idle_longer(now, nv->last_seen, cfg->tcp_close_ns) ? RECLAIM_EXPIRED : RECLAIM_NO;
	}
	__u32 state = ov->state;
	int embryonic = ct_embryonic(rk->proto, state, ov->kind);
	__u64 timeout = ct_timeout(cfg, rk->proto, state, ov->kind);
	if (idle_longer(now, ov->last_seen, timeout) && (embryonic || idle_longer(now, nv->last_seen, timeout)))
		return RECLAIM_EXPIRED;
	if (embryonic && idle_longer(now, ov->last_seen, cfg->tcp_syn_evict_ns) &&
	    idle_longer(now, nv->last_seen, cfg->tcp_syn_evict_ns))
		return RECLAIM_EVICT;
	return RECLAIM_NO;
}

/*
 * snat_alloc inserts the NAT entry sc->rk/sc->rv with a source from the
 * family's pool (rk's daddr holds the pool's first address; the chosen one
 * is left there) and the port range: slots of pool x range probed from the
 * target's next cursor position (RFC 6056 algorithm 4, above), by a stride
 * coprime with their number. BPF_NOEXIST
 * makes the claim of a free slot collision-safe; a slot whose flow is over
 * in both directions, or embryonic and silent (nat_reclaimable), is taken
 * over, claimed by a compare-and-swap of its last_seen so two CPUs cannot
 * both take it, and the old flow's forward entry is deleted. Returns the
 * port (network order) or 0; sc->probe.full says a free slot was refused
 * because the NAT map is full (nat_full, not port_exhausted).
 */
static __always_inline __be16 snat_alloc(struct scratch *sc, const struct pkt *p, const struct config *cfg, __u64 now)
{
	struct ct_key *rk = &sc->rk;
	__u32 count = snat_pool_count(cfg, p->family);
	if (count == 0 || count > SNAT_POOL_MAX)
		return 0;
	sc->probe.min = cfg->port_min;
	sc->probe.range = (__u32)cfg->port_max - cfg->port_min + 1;
	sc->probe.slots = sc->probe.range * count;
	/* Two primes: no slot count (at most 65536 x SNAT_POOL_MAX) is a multiple of both. */
	sc->probe.stride = sc->probe.slots % 7919u ? 7919u : 7907u;
	sc->probe.first = bpf_ntohl(*(__be32 *)(rk->daddr + 12));
	__u32 th = target_hash(rk);
	sc->probe.h = th + snat_cursor(th);
	sc->probe.full = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < PORT_RETRIES; i++) {
		__u32 slot = (sc->probe.h + (__u32)i * sc->probe.stride) % sc->probe.slots;
		__u32 ai = slot / sc->probe.range;
		*(__be32 *)(sc->rk.daddr + 12) = bpf_htonl(sc->probe.first + ai);
		sc->rk.dport = bpf_htons((__u16)(sc->probe.min + slot - ai * sc->probe.range));
		long err = nat_update(&sc->rk, &sc->rv, BPF_NOEXIST);
		if (err == 0)
			return sc->rk.dport;
		struct nat_value *old = nat_lookup(&sc->rk);
		if (!old) {
			if (err == -E2BIG_)
				sc->probe.full = 1; /* a free slot, no free element: only a takeover can succeed */
			continue;
		}
		__u64 seen = old->last_seen;
		int why = nat_reclaimable(old, &sc->rk, &sc->owner, now, cfg);
		if (why == RECLAIM_NO)
			continue;
		if (__sync_val_compare_and_swap(&old->last_seen, seen, now) != seen)
			continue; /* touched meanwhile: a reply, or another CPU's claim */
		if (nat_update(&sc->rk, &sc->rv, BPF_EXIST) != 0)
			continue;
		if (sc->owner.proto)
			ct_delete(&sc->owner);
		if (why == RECLAIM_EVICT) {
			count_reason(REASON_SYN_EVICTED);
			synproxy_pressure(cfg, now);
		}
		return sc->rk.dport;
	}
	synproxy_pressure(cfg, now);
	return 0;
}

/* nat_release frees a finished flow's port (its forward entry v, key k) unless another flow has taken it over. */
static __always_inline void nat_release(const struct ct_value *v, const struct ct_key *k)
{
	struct scratch *sc = scratch();
	if (!sc)
		return;
	nat_key_of(&sc->nk, v, k->proto);
	struct nat_value *nv = nat_lookup(&sc->nk);
	if (nv && nat_owned_by(nv, k))
		nat_delete(&sc->nk);
}

/*
 * flow_csum sets a new redirected flow's checksum changes (fv's addresses
 * and ports replacing the packet's): the same for every packet of the
 * flow, so the pinned path only applies them. The address change over
 * whole IPv4-mapped addresses equals the IPv4 one (the mapped prefixes
 * cancel out).
 */
static __always_inline void flow_csum(struct ct_value *fv, const struct pkt *p)
{
	__be16 old_ports[2] = {p->sport, p->dport};
	__be16 new_ports[2] = {fv->snat_port, fv->target_port};
	/* p: saddr then daddr; fv: target_addr then snat_addr: a sum does not mind the order. */
	__s64 d = bpf_csum_diff((__be32 *)p->saddr, 32, (__be32 *)fv->target_addr, 32, 0);
	if (d < 0)
		return; /* csum_set stays 0: computed per packet */
	fv->csum_addrs = csum_fold16((__u32)d);
	fv->csum_ports = csum_fold16(csum_diff16(old_ports, new_ports, 2));
	fv->csum_set = 1;
}

/* xlate_reverse sets x to take a reply of nv's flow back to its client (frontend -> client), counted under its frontend. */
static __always_inline void xlate_reverse(struct xlate *x, const struct nat_value *nv)
{
	__builtin_memcpy(x->src, nv->front_addr, 16);
	__builtin_memcpy(x->dst, nv->client_addr, 16);
	x->sport = nv->front_port;
	x->dport = nv->client_port;
	x->id = nv->frontend_id;
	x->counter = nv->counter;
	x->action = ACTION_REVERSE;
}

/* xlate_redirect sets x to send a packet of cv's flow to its target (SNAT address -> target); x->id is the caller's. */
static __always_inline void xlate_redirect(struct xlate *x, const struct ct_value *cv)
{
	__builtin_memcpy(x->src, cv->snat_addr, 16);
	__builtin_memcpy(x->dst, cv->target_addr, 16);
	x->sport = cv->snat_port;
	x->dport = cv->target_port;
	x->action = ACTION_REDIRECT;
	x->counter = cv->counter;
}

#endif /* NAT_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef NAT_PROG_H
#define NAT_PROG_H

/*
 * rewrite sets the packet's source to ns:nsport and destination to nd:ndport
 * (IPv4-mapped for IPv4), fixing the IPv4 header checksum here and the L4
 * checksum through the attach point's roam_l4_csum (XDP: arithmetic in
 * place; tc: bpf_l4_csum_replace, correct for CHECKSUM_PARTIAL too). x,
 * if not NULL, may carry the flow's checksum changes for this rewrite
 * (csum_set). Returns 0, or -1 if the packet is shorter than parsed
 * (cannot happen).
 */
static __always_inline int rewrite(ROAM_CTX *ctx, struct pkt *p, const __u8 *ns, __be16 nsport, const __u8 *nd,
				   __be16 ndport, const struct xlate *x)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int have = x && x->csum_set;
	__u32 diff_ports, diff_l3 = 0;
	if (have) {
		diff_l3 = x->csum_addrs;
		diff_ports = x->csum_ports;
	} else {
		/* Arrays of 16-bit words, not a u32 read as u16s: that would break strict aliasing. */
		__be16 old_ports[2] = {p->sport, p->dport};
		__be16 new_ports[2] = {nsport, ndport};
		diff_ports = csum_diff16(old_ports, new_ports, 2);
	}

	if (p->family == FAMILY_V4) {
		struct ip4_hdr *iph = data + L3_OFF;
		if ((void *)(iph + 1) > data_end)
			return -1;
		if (!have)
			diff_l3 = csum_diff16((__u16 *)&iph->saddr, (const __u16 *)(ns + 12), 2) +
				  csum_diff16((__u16 *)&iph->daddr, (const __u16 *)(nd + 12), 2);
		__builtin_memcpy(&iph->saddr, ns + 12, 4);
		__builtin_memcpy(&iph->daddr, nd + 12, 4);
		if (!(ROAM_ABLATE & ABLATE_CSUM))
			iph->check = csum_update(iph->check, diff_l3);
	} else {
		struct ip6_hdr *ip6 = data + L3_OFF;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		/* 32 bytes: the helper keeps the program small where inline sums would spill. */
		if (!have && !(ROAM_ABLATE & ABLATE_CSUM)) {
			diff_l3 = bpf_csum_diff((__be32 *)ip6->saddr, 16, (__be32 *)ns, 16, 0);
			diff_l3 = bpf_csum_diff((__be32 *)ip6->daddr, 16, (__be32 *)nd, 16, diff_l3);
		}
		__builtin_memcpy(ip6->saddr, ns, 16);
		__builtin_memcpy(ip6->daddr, nd, 16);
	}

	__u32 l4 = p->family == FAMILY_V4 ? L4_OFF4 : L4_OFF6;
	__be16 *ports = data + l4;
	if ((void *)(ports + 2) > data_end)
		return -1;
	ports[0] = nsport;
	ports[1] = ndport;
	if (x && x->seq_fix && p->proto == IPPROTO_TCP_)
		diff_ports = csum_add32(diff_ports, synproxy_seq(data, data_end, l4, x));

	__builtin_memcpy(p->saddr, ns, 16);
	__builtin_memcpy(p->daddr, nd, 16);
	p->sport = nsport;
	p->dport = ndport;
	if (ROAM_ABLATE & ABLATE_CSUM)
		return 0;
	return roam_l4_csum(ctx, p, l4, diff_l3, diff_ports);
}

#endif /* NAT_PROG_H */
