/* conntrack.h: the TCP state machine of a flow, its timeouts, and its liveness over both directions. */
#pragma once

#include "maps.h"
#include "parse.h"

/*
 * ct_key_set fills a key from a tuple laid out as a key's first 36 bytes
 * (two addresses, two ports): struct pkt, and the peer fields of struct
 * ct_value and struct nat_value are.
 */
struct ct_tuple {
	__u32 w[9];
};

static __always_inline void ct_key_set(struct ct_key *k, const void *tuple, __u8 proto, __u8 family)
{
	*(struct ct_tuple *)k = *(const struct ct_tuple *)tuple; /* all three are 4-byte aligned */
	k->proto = proto;
	k->family = family;
	k->pad = 0;
}

/*
 * The flow maps by family (maps.h): an IPv4 key is narrowed to struct
 * ct4_key (the IPv4-mapped addresses' last 4 bytes) for roam_ct4 and
 * roam_nat4; an IPv6 key goes to roam_conntrack and roam_nat as it is.
 */
/*
 * apart keeps the IPv4 branch's map call from being merged with the IPv6
 * one (clang sinks two calls that differ in their map into one, whose map
 * the verifier then cannot know: it inlines a hash lookup only at a call
 * with one map, and calls the helper through map->ops otherwise, ~5-10 ns
 * more per lookup). An empty asm cannot be sunk, so neither can the call
 * before it.
 */
#define apart(v) asm volatile("" : "+r"(v))

static __always_inline void ct4_key_of(struct ct4_key *k4, const struct ct_key *k)
{
	k4->saddr = *(const __be32 *)(k->saddr + 12);
	k4->daddr = *(const __be32 *)(k->daddr + 12);
	k4->sport = k->sport;
	k4->dport = k->dport;
	k4->proto = k->proto;
	k4->pad[0] = k4->pad[1] = k4->pad[2] = 0;
}

static __always_inline struct ct_value *ct_lookup(const struct ct_key *k)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		struct ct_value *v = bpf_map_lookup_elem(&roam_ct4, &k4);
		apart(v);
		return v;
	}
	return bpf_map_lookup_elem(&roam_conntrack, k);
}

static __always_inline long ct_update(const struct ct_key *k, const struct ct_value *v, __u64 flags)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		long err = bpf_map_update_elem(&roam_ct4, &k4, v, flags);
		apart(err);
		return err;
	}
	return bpf_map_update_elem(&roam_conntrack, k, v, flags);
}

static __always_inline long ct_delete(const struct ct_key *k)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		long err = bpf_map_delete_elem(&roam_ct4, &k4);
		apart(err);
		return err;
	}
	return bpf_map_delete_elem(&roam_conntrack, k);
}

static __always_inline struct nat_value *nat_lookup(const struct ct_key *k)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		struct nat_value *v = bpf_map_lookup_elem(&roam_nat4, &k4);
		apart(v);
		return v;
	}
	return bpf_map_lookup_elem(&roam_nat, k);
}

static __always_inline long nat_update(const struct ct_key *k, const struct nat_value *v, __u64 flags)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		long err = bpf_map_update_elem(&roam_nat4, &k4, v, flags);
		apart(err);
		return err;
	}
	return bpf_map_update_elem(&roam_nat, k, v, flags);
}

static __always_inline long nat_delete(const struct ct_key *k)
{
	if (k->family == FAMILY_V4) {
		struct ct4_key k4;
		ct4_key_of(&k4, k);
		long err = bpf_map_delete_elem(&roam_nat4, &k4);
		apart(err);
		return err;
	}
	return bpf_map_delete_elem(&roam_nat, k);
}

/* ct_key_from_pkt is the key of the packet's own direction. */
static __always_inline void ct_key_from_pkt(struct ct_key *k, const struct pkt *p)
{
	ct_key_set(k, p->saddr, p->proto, p->family);
}

/* nat_key_of is the key of a redirected flow's replies: target -> SNAT address and port. */
static __always_inline void nat_key_of(struct ct_key *rk, const struct ct_value *v, __u8 proto)
{
	ct_key_set(rk, v->target_addr, proto, v->family);
}

/* flow_key_of is the forward key of the flow a NAT entry belongs to: client -> frontend. */
static __always_inline void flow_key_of(struct ct_key *k, const struct nat_value *nv, __u8 proto)
{
	ct_key_set(k, nv->client_addr, proto, nv->family);
}

/* nat_belongs: whether the NAT entry at rk is the one the forward entry v points to. */
static __always_inline int nat_belongs(const struct ct_value *v, const struct ct_key *rk)
{
	return v->snat_port == rk->dport && v->target_port == rk->sport && addr_eq(v->snat_addr, rk->daddr) &&
	       addr_eq(v->target_addr, rk->saddr);
}

/* nat_owned_by: whether the NAT entry nv belongs to the flow whose forward key is k. */
static __always_inline int nat_owned_by(const struct nat_value *nv, const struct ct_key *k)
{
	return nv->client_port == k->sport && nv->front_port == k->dport && addr_eq(nv->client_addr, k->saddr) &&
	       addr_eq(nv->front_addr, k->daddr);
}

/* ct_done: both FINs, or an RST not contradicted since; a local flow at the client's FIN (its replies bypass the programs). */
static __always_inline int ct_done(__u32 state, __u8 kind)
{
	if (state & CT_RST)
		return 1;
	if (kind == TARGET_LOCAL)
		return (state & CT_FIN_FWD) != 0;
	return (state & (CT_FIN_FWD | CT_FIN_REV)) == (CT_FIN_FWD | CT_FIN_REV);
}

/*
 * ct_embryonic: a TCP flow whose client has not acknowledged the target
 * yet. Its liveness is the client's alone: a target answering a spoofed
 * SYN (and sending its SYN-ACK again for a minute) must not keep the flow,
 * and its SNAT port, alive.
 */
static __always_inline int ct_embryonic(__u8 proto, __u32 state, __u8 kind)
{
	return proto == IPPROTO_TCP_ && !(state & CT_ESTABLISHED) && !ct_done(state, kind);
}

/* ct_timeout is how long a flow in this state lives with no packet in either direction. */
static __always_inline __u64 ct_timeout(const struct config *cfg, __u8 proto, __u32 state, __u8 kind)
{
	if (proto != IPPROTO_TCP_)
		return cfg->udp_ns;
	if (ct_done(state, kind))
		return (state & (CT_TARGET_TIME_WAIT | CT_RST)) == CT_TARGET_TIME_WAIT ? cfg->tcp_time_wait_ns
											: cfg->tcp_close_ns;
	if (!(state & CT_ESTABLISHED))
		return cfg->tcp_syn_ns;
	return cfg->tcp_established_ns;
}

/* idle_longer: more than timeout passed since seen (a stamp from another CPU may be a tick ahead of now). */
static __always_inline int idle_longer(__u64 now, __u64 seen, __u64 timeout)
{
	return now > seen && now - seen > timeout;
}

/* ct_touch stamps an entry (coarse clock: mostly unchanged, so the cache line stays clean). */
static __always_inline void ct_touch(__u64 *last_seen, __u64 now)
{
	if (*last_seen != now)
		*last_seen = now;
}

/* ct_reply_seen is the last reply of a redirected flow while its NAT entry is still its own, else 0. */
static __always_inline __u64 ct_reply_seen(const struct ct_value *v, const struct ct_key *k)
{
	struct scratch *sc = scratch();
	if (!sc)
		return 0;
	nat_key_of(&sc->nk, v, k->proto);
	struct nat_value *nv = nat_lookup(&sc->nk);
	if (!nv || !nat_owned_by(nv, k))
		return 0;
	return nv->last_seen;
}

/* ct_expired: no packet in either direction for the state's timeout (an embryonic flow: none from the client). */
static __always_inline int ct_expired(const struct ct_value *v, const struct ct_key *k, __u64 now,
				      const struct config *cfg)
{
	__u64 timeout = ct_timeout(cfg, k->proto, v->state, v->kind);
	if (!idle_longer(now, v->last_seen, timeout))
		return 0;
	if (v->kind != TARGET_REDIRECT || ct_embryonic(k->proto, v->state, v->kind))
		return 1;
	return idle_longer(now, ct_reply_seen(v, k), timeout);
}

/* nat_mark_rst mirrors CT_RST into the flow's NAT entry, so that a reply can contradict it. */
static __always_inline void nat_mark_rst(const struct ct_value *v, __u8 proto, int on)
{
	struct scratch *sc = scratch();
	if (!sc)
		return;
	nat_key_of(&sc->nk, v, proto);
	struct nat_value *nv = nat_lookup(&sc->nk);
	if (!nv)
		return;
	if (on)
		__sync_fetch_and_or(&nv->flags, NAT_RST);
	else
		__sync_fetch_and_and(&nv->flags, ~NAT_RST);
}

/* ct_on_forward moves a TCP flow's state on the client's packet. */
static __always_inline void ct_on_forward(struct ct_value *v, const struct pkt *p)
{
	__u32 s = v->state, set = 0, clear = 0;
	__u8 f = p->tcp_flags;

	if (f & TCP_FLAG_RST) {
		set = CT_RST;
	} else {
		clear = s & CT_RST; /* contradicted: the RST was not the end */
		if ((f & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_ACK &&
		    (v->kind == TARGET_LOCAL || (s & CT_SEEN_REPLY)))
			set |= CT_ESTABLISHED;
		if ((f & TCP_FLAG_FIN) && !(s & CT_FIN_FWD)) {
			v->fin_seq = p->fin_end;
			set |= CT_FIN_FWD;
		}
	}
	set &= ~s;
	if (!(set | clear))
		return; /* the established path: nothing changes */
	if (set)
		__sync_fetch_and_or(&v->state, set);
	if (clear)
		__sync_fetch_and_and(&v->state, ~clear);
	if (((set | clear) & CT_RST) && v->kind == TARGET_REDIRECT)
		nat_mark_rst(v, p->proto, set & CT_RST);
}

/*
 * ct_on_reply moves a redirected TCP flow's state on the target's packet
 * (nv: the NAT entry it matched). Called for SYN, FIN and RST, and for any
 * reply while an RST is pending. A target FIN that does not acknowledge
 * the client's FIN means the target closed first (or both at once): it
 * goes through TIME_WAIT.
 */
static __always_inline void ct_on_reply(struct nat_value *nv, const struct pkt *p, const struct ct_key *rk)
{
	struct scratch *sc = scratch();
	if (!sc)
		return;
	flow_key_of(&sc->fk, nv, p->proto);
	struct ct_value *v = ct_lookup(&sc->fk);
	if (!v || !nat_belongs(v, rk))
		return;
	__u32 s = v->state, set, clear = 0;
	__u8 f = p->tcp_flags;

	if (f & TCP_FLAG_RST) {
		set = CT_RST;
	} else {
		set = CT_SEEN_REPLY;
		clear = s & CT_RST;
		if ((f & TCP_FLAG_FIN) && !(s & CT_FIN_REV)) {
			set |= CT_FIN_REV;
			if (!(s & CT_FIN_FWD) || !(f & TCP_FLAG_ACK) || (__s32)(bpf_ntohl(p->tcp_ack) - v->fin_seq) < 0)
				set |= CT_TARGET_TIME_WAIT;
		}
	}
	set &= ~s;
	if (set)
		__sync_fetch_and_or(&v->state, set);
	if (clear)
		__sync_fetch_and_and(&v->state, ~clear);
	if ((set | clear) & CT_RST) {
		if (set & CT_RST)
			__sync_fetch_and_or(&nv->flags, NAT_RST);
		else
			__sync_fetch_and_and(&nv->flags, ~NAT_RST);
	}
}
