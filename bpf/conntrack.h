/* conntrack.h: conntrack keys, expiry (idle and closing timeouts) and TCP state tracking. */
#pragma once

#include "maps.h"
#include "parse.h"

/* ct_timeout is how long an entry lives without packets: short once FIN or RST was seen. */
static __always_inline __u64 ct_timeout(const struct ct_value *v, __u64 idle)
{
	if ((v->flags & CT_FLAG_CLOSING) && CLOSING_TIMEOUT_NS < idle)
		return CLOSING_TIMEOUT_NS;
	return idle;
}

static __always_inline int ct_expired(const struct ct_value *v, __u64 now, __u64 idle)
{
	__u64 seen = v->last_seen;
	if (seen >= now) /* stamped by another CPU a moment later */
		return 0;
	return now - seen > ct_timeout(v, idle);
}

/* ct_key_from_pkt is the key of the packet's own direction. */
static __always_inline void ct_key_from_pkt(struct ct_key *k, const struct pkt *p)
{
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->family = p->family;
}

/* ct_touch refreshes an entry on a packet and marks it closing on FIN or RST. */
static __always_inline void ct_touch(struct ct_value *v, const struct pkt *p, __u64 now)
{
	if (v->last_seen != now) /* coarse clock: mostly unchanged, keep the line clean */
		v->last_seen = now;
	if (p->proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		v->flags |= CT_FLAG_CLOSING;
}

/* ct_is_new_syn: a bare SYN on a closing entry starts a new flow on the same tuple. */
static __always_inline int ct_is_new_syn(const struct ct_value *v, const struct pkt *p)
{
	return p->proto == IPPROTO_TCP_ && (v->flags & CT_FLAG_CLOSING) &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* ct_reverse_key_of is the key replies carry for a forward entry: target -> SNAT address and port. */
static __always_inline void ct_reverse_key_of(struct ct_key *rk, const struct ct_value *fwd, __u8 proto)
{
	__builtin_memcpy(rk->saddr, fwd->peer_addr, 16);
	__builtin_memcpy(rk->daddr, fwd->nat_addr, 16);
	rk->sport = fwd->peer_port;
	rk->dport = fwd->nat_port;
	rk->proto = proto;
	rk->family = fwd->family;
	rk->pad = 0;
}
