/* balancer.h: the per-packet pipeline shared by XDP and tc: replies back through NAT, pinned flows, new flows. */

#include "icmp.h"
#include "synrecv.h"

#ifndef BALANCER_H
#define BALANCER_H

/* is_reply: addressed to a SNAT pool address and a port of its range, where only targets' replies can be ours. */
static __always_inline int is_reply(const struct pkt *p, const struct config *cfg)
{
	return snat_owns(cfg, p->family, p->daddr, p->dport);
}

/* roam_test_spin: one round of ROAM_TEST_READ_DELAY (consts.h). */
static long roam_test_spin(__u32 i, void *ctx)
{
	return 0;
}

/*
 * active_target returns a copy of the active target of the frontend k is
 * addressed to (see roam_services and roam_service_slots in maps.h), and its
 * id; NULL if there is no such frontend. `active` is read once; the slot it
 * names is not rewritten before every program that may have read it has
 * finished (maps.h).
 */
static __always_inline struct target *active_target(const struct ct_key *k, __u32 *id)
{
	struct scratch *sc = scratch();
	if (!sc)
		return NULL;
	__builtin_memcpy(sc->svc.addr, k->daddr, 16);
	sc->svc.port = k->dport;
	sc->svc.proto = k->proto;
	sc->svc.family = k->family;
	__u32 *idp = bpf_map_lookup_elem(&roam_services, &sc->svc);
	if (!idp)
		return NULL;
	__u32 i = *idp;
	struct service *svc = bpf_map_lookup_elem(&roam_service_slots, idp);
	if (!svc)
		return NULL;
	__u32 active = *(volatile __u32 *)&svc->active & 1;
	if (ROAM_TEST_READ_DELAY)
		bpf_loop(ROAM_TEST_READ_DELAY, roam_test_spin, NULL, 0);
	*id = i;
	__builtin_memcpy(&sc->t, &svc->slot[active], sizeof(sc->t));
	return &sc->t;
}

/*
 * away_from_host: the flow of a packet the programs cannot rewrite (a
 * fragment, IP options, IPv6 extension headers; p->ports_only) is one they
 * send elsewhere: pinned to a target away from this host, or new to a
 * frontend whose active target is away. Handed to the host, it would reach
 * no socket there (or the host's own), so it is dropped. *id: its frontend.
 */
static __always_inline int away_from_host(const struct pkt *p, __u32 *id)
{
	struct ct_key k = {};
	ct_key_from_pkt(&k, p);
	struct ct_value *cv = ct_lookup(&k);
	if (cv) {
		*id = cv->frontend_id;
		return cv->kind == TARGET_REDIRECT;
	}
	struct target *t = active_target(&k, id);
	return t && (t->kind == TARGET_REDIRECT || t->kind == TARGET_SRV6);
}

/* udp_moved: a commit moved the UDP flow's frontend away from its target (or removed it). */
static __always_inline int udp_moved(const struct ct_value *v, const struct ct_key *k)
{
	__u32 id;
	struct target *t = active_target(k, &id);
	if (!t || t->kind != v->kind)
		return 1;
	return v->kind == TARGET_REDIRECT && (t->port != v->target_port || !addr_eq(t->addr, v->target_addr));
}

/*
 * udp_over: a UDP flow is over after udp_ns idle, or after udp_drain_ns idle
 * once a commit moved its frontend away (idle: in both directions). A flow
 * whose client is seldom heard from (every packet more than udp_drain_ns
 * after the last: a table of many flows) is asked first whether its frontend
 * moved, from the few frontends' records that stay in cache; only a flow
 * moved away, or idle for udp_ns one way, pays the NAT entry's lookup (a
 * cache miss per packet in a large table) for its replies' last.
 */
static __always_inline int udp_over(const struct ct_value *v, const struct ct_key *k, __u64 now,
				    const struct config *cfg)
{
	__u64 seen = v->last_seen;
	if (!idle_longer(now, seen, cfg->udp_drain_ns))
		return 0;
	int moved = -1; /* not asked yet */
	if (!idle_longer(now, seen, cfg->udp_ns)) {
		moved = udp_moved(v, k);
		if (!moved)
			return 0; /* the replies could only make it younger */
	}
	if (v->kind == TARGET_REDIRECT) {
		__u64 r = ct_reply_seen(v, k);
		if (r > seen)
			seen = r;
	}
	if (!idle_longer(now, seen, cfg->udp_drain_ns))
		return 0;
	if (idle_longer(now, seen, cfg->udp_ns))
		return 1;
	if (moved < 0)
		moved = udp_moved(v, k);
	return moved;
}

/* roam_reply updates a target's reply's flow and returns its NAT entry; NULL if it matches none. */
static __always_inline struct nat_value *roam_reply(struct pkt *p, __u64 now)
{
	struct ct_key rk = {};
	ct_key_from_pkt(&rk, p);
	struct nat_value *nv = nat_lookup(&rk);
	if (!nv)
		return NULL;
	ct_touch(&nv->last_seen, now);
	if (p->proto == IPPROTO_TCP_ &&
	    ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)) || (nv->flags & NAT_RST)))
		ct_on_reply(nv, p, &rk);
	return nv;
}

/*
 * roam_new_flow's verdict (besides VERDICT_PASS, VERDICT_DROP and
 * VERDICT_FLOW): encapsulate along the SRv6 path in scratch (no per-flow
 * state: the path's locations keep it).
 */
#define VERDICT_SRV6 (-2)
/* and: the SYN proxy's packet (synproxy.h synproxy_wanted): roam_process calls synproxy_new. */
#define VERDICT_SYNPROXY (-4)

#endif /* BALANCER_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef BALANCER_PROG_H
#define BALANCER_PROG_H

/*
 * The attach point provides ROAM_CTX, ROAM_WIRE_LEN, VERDICT_PASS and
 * VERDICT_DROP, ROAM_OWN_SOCKET (the packet's own socket, tc egress),
 * roam_l4_csum, roam_xmit (next hop, rewrite and out; now: the packet's clock)
 * and roam_srv6_out (an SRv6 target's packet: encapsulate, srv6.h).
 */

/* roam_local_socket: a TCP socket of this host (not a listener) owns the packet's tuple. */
static __always_inline int roam_local_socket(ROAM_CTX *ctx, const struct pkt *p)
{
	return ROAM_OWN_SOCKET(ctx) || host_socket_owns(ctx, p);
}

/*
 * roam_new_flow pins a new flow (a TCP SYN, or any UDP packet) to the
 * frontend's active target and returns VERDICT_FLOW with *out set to its
 * entry, or a verdict; old is the entry of a flow over on the same tuple,
 * if any. A TCP packet without SYN gets no state: it is passed if the
 * frontend is local or a socket of this host owns it, else dropped.
 * Not inlined: a subprogram with its own stack frame, off the pinned path.
 */
static __noinline int roam_new_flow(ROAM_CTX *ctx, struct pkt *p, const struct ct_key *k, const struct ct_value *old,
				    struct ct_value **out)
{
	__u32 zero = 0;
	const struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	if (!cfg)
		return VERDICT_PASS;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct scratch *sc = scratch();
	if (!sc)
		return VERDICT_PASS;
	/*
	 * synproxy_new turned a cookie ACK into this SYN. Read and cleared
	 * before any return: a commit between synproxy_new and this call can
	 * make the frontend NONE, SRv6 or gone, and a mark left set would make
	 * this CPU's next new flow a proxied one with another flow's cookie.
	 */
	int proxied = sc->sp.proxied;
	sc->sp.proxied = 0;
	__u32 id;
	struct target *t = active_target(k, &id);
	if (!t)
		return VERDICT_PASS;
	__u8 kind = t->kind;
	if (kind == TARGET_NONE) {
		count_action(id, ACTION_PASS, p->len);
		return VERDICT_PASS;
	}
	if (kind == TARGET_SRV6) {
		sc->id = id;
		return VERDICT_SRV6;
	}
	if (!proxied && cfg->synproxy != SYNPROXY_OFF && p->proto == IPPROTO_TCP_ && kind == TARGET_REDIRECT &&
	    synproxy_wanted(p, cfg, now) && ((p->tcp_flags & TCP_FLAG_SYN) || !roam_local_socket(ctx, p)))
		return VERDICT_SYNPROXY;
	if (p->proto == IPPROTO_TCP_ && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN) {
		if (kind == TARGET_LOCAL && srv6_previous(id) && !roam_local_socket(ctx, p))
			return VERDICT_SRV6; /* a move back home: its connection stays on the path it came from (srv6.h) */
		if (kind == TARGET_LOCAL || roam_local_socket(ctx, p)) {
			count_action(id, ACTION_PASS, p->len);
			return VERDICT_PASS;
		}
		count_reason(REASON_NO_FLOW);
		count_action(id, ACTION_DROP, p->len);
		return VERDICT_DROP;
	}
	if (old && old->kind == TARGET_REDIRECT)
		nat_release(old, k);

	struct ct_value *fv = &sc->fv;
	__builtin_memset(fv, 0, sizeof(*fv));
	fv->kind = kind;
	fv->family = p->family;
	fv->frontend_id = id;
	fv->last_seen = now;
	if (kind == TARGET_LOCAL) {
		/* Pinned too, so a commit away from local leaves this flow here. */
		if (ct_update(k, fv, BPF_ANY) != 0)
			count_reason(REASON_CT_FULL);
		*out = fv;
		return VERDICT_FLOW;
	}
	if (sc->t.family != p->family) {
		count_reason(REASON_FAMILY_MISMATCH);
		count_action(id, ACTION_DROP, p->len);
		return VERDICT_DROP;
	}
	if (!snat_pool_count(cfg, p->family)) {
		count_reason(REASON_NO_SNAT);
		count_action(id, ACTION_DROP, p->len);
		return VERDICT_DROP;
	}
	if (cfg->port_min == 0 || cfg->port_max < cfg->port_min) {
		count_reason(REASON_NO_CONFIG);
		count_action(id, ACTION_PASS, p->len);
		return VERDICT_PASS;
	}
	__builtin_memcpy(fv->target_addr, sc->t.addr, 16);
	__builtin_memcpy(fv->snat_addr, p->family == FAMILY_V4 ? cfg->snat4 : cfg->snat6, 16);
	fv->target_port = sc->t.port;
	fv->counter = sc->t.counter;

	struct ct_key *rk = &sc->rk;
	nat_key_of(rk, fv, p->proto); /* its port comes from snat_alloc */
	struct nat_value *rv = &sc->rv;
	__builtin_memset(rv, 0, sizeof(*rv));
	__builtin_memcpy(rv->client_addr, p->saddr, 16);
	__builtin_memcpy(rv->front_addr, p->daddr, 16);
	rv->client_port = p->sport;
	rv->front_port = p->dport;
	rv->family = p->family;
	rv->flags = p->proto == IPPROTO_TCP_ ? NAT_SYN_WAIT : 0;
	rv->frontend_id = id;
	rv->counter = sc->t.counter;
	rv->last_seen = now;
	if (proxied)
		synproxy_mark(fv, rv, sc);

	fv->snat_port = snat_alloc(sc, p, cfg, now);
	if (!fv->snat_port) {
		count_reason(sc->probe.full ? REASON_NAT_FULL : REASON_PORT_EXHAUSTED);
		count_action(id, ACTION_DROP, p->len);
		return VERDICT_DROP;
	}
	__builtin_memcpy(fv->snat_addr, rk->daddr, 16); /* the pool address snat_alloc chose */
	flow_csum(fv, p);
	if (ct_update(k, fv, BPF_ANY) != 0) {
		nat_delete(rk);
		count_reason(REASON_CT_FULL);
		count_action(id, ACTION_DROP, p->len);
		return VERDICT_DROP;
	}
	*out = fv;
	return VERDICT_FLOW;
}

/* roam_process handles one packet. */
static __always_inline int roam_process(ROAM_CTX *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	struct xlate x;
	x.csum_set = 0;
	x.seq_fix = 0;
	x.counter = 0;

	int rc = parse_packet(data, data_end, ROAM_WIRE_LEN(ctx), &p);
	if (rc == PARSE_SKIP)
		return VERDICT_PASS;
	if (rc == PARSE_ERR) {
		count_reason(p.reason);
		__u32 id;
		if (p.ports_only && away_from_host(&p, &id)) {
			count_action(id, ACTION_DROP, p.len);
			return VERDICT_DROP;
		}
		return VERDICT_PASS;
	}

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	if (!cfg)
		return VERDICT_PASS;
	/* CLOCK_MONOTONIC at tick resolution: ample for flow timeouts, and much cheaper than bpf_ktime_get_ns under kvm-clock. */
	__u64 now = (ROAM_ABLATE & ABLATE_CLOCK) ? 1 : bpf_ktime_get_coarse_ns();

	if (rc == PARSE_ICMP) {
		rc = roam_icmp(ctx, &p, &x);
		if (rc != VERDICT_FLOW)
			return rc;
		goto xmit; /* one call site: roam_xmit is inlined */
	}

	if (is_reply(&p, cfg)) {
		/* A target's reply: source back to the frontend, destination back to the client. */
		struct nat_value *nv = roam_reply(&p, now);
		if (!nv)
			return VERDICT_PASS; /* not a flow of ours: the host's */
		if (p.proto == IPPROTO_TCP_ && (nv->flags & NAT_PROXY)) {
			rc = synproxy_reply(ctx, nv, &p, &x);
			if (rc != VERDICT_FLOW)
				return rc;
		}
		if (p.proto == IPPROTO_TCP_ && (nv->flags & NAT_SYN_WAIT) && stale_synrecv(nv, &p) && ROAM_STALE_ANSWERED) {
			count_reason(REASON_SYN_RECV_STALE);
			return ROAM_STALE_RESET(ctx);
		}
		xlate_reverse(&x, nv);
	} else {
		struct ct_key k = {};
		ct_key_from_pkt(&k, &p);
		struct ct_value *cv = ct_lookup(&k);
		struct ct_value *old = cv;
		if (cv && p.proto == IPPROTO_TCP_) {
			/* A SYN on a flow that is done (or expired) starts a new flow on the same tuple. */
			if ((p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
			    (ct_done(cv->state, cv->kind) || ct_expired(cv, &k, now, cfg)))
				cv = NULL;
			else if (ROAM_SYNPROXY && cfg->synproxy != SYNPROXY_OFF &&
				 (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST | TCP_FLAG_FIN)) == TCP_FLAG_ACK &&
				 (ct_done(cv->state, cv->kind) || ct_expired(cv, &k, now, cfg)) && synproxy_is_cookie(ctx))
				cv = NULL; /* a proxied connection on a finished flow's tuple: its ACK carries our cookie (synproxy.h) */
			else
				ct_on_forward(cv, &p);
		} else if (cv && idle_longer(now, cv->last_seen, cfg->udp_drain_ns) && udp_over(cv, &k, now, cfg)) {
			cv = NULL;
		}
		if (cv) {
			/*
			 * Pinned flow: keeps the target it started with, whatever was
			 * committed since. No service lookup: Remove deletes a frontend's
			 * conntrack entries with it.
			 */
			ct_touch(&cv->last_seen, now);
		} else {
			rc = roam_new_flow(ctx, &p, &k, old, &cv);
			if (rc == VERDICT_SYNPROXY) {
				rc = synproxy_new(ctx, &p);
				if (rc != VERDICT_FLOW)
					return rc;
				rc = roam_new_flow(ctx, &p, &k, old, &cv);
			}
			if (rc == VERDICT_SRV6)
				return roam_srv6_out(ctx, &p);
			if (rc != VERDICT_FLOW)
				return rc;
		}
		x.id = cv->frontend_id;
		if (cv->kind != TARGET_REDIRECT) {
			count_action(x.id, ACTION_PASS, p.len);
			return VERDICT_PASS;
		}
		if (cv->state & CT_PROXY) {
			rc = synproxy_forward(ctx, &p, cv, &x);
			if (rc != VERDICT_FLOW)
				return rc;
		}
		xlate_redirect(&x, cv);
		x.csum_addrs = cv->csum_addrs;
		x.csum_ports = cv->csum_ports;
		x.csum_set = cv->csum_set;
	}
xmit:
	return roam_xmit(ctx, &p, &x, now);
}

#endif /* BALANCER_PROG_H */
