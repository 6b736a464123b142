/* balancer.h: the per-packet pipeline shared by XDP and tc: reverse translation, frontend lookup, flow pinning, NAT. */
#pragma once

#include "nat.h"

/*
 * roam_process handles one packet. The attach point provides ROAM_CTX,
 * ROAM_WIRE_LEN, VERDICT_PASS/VERDICT_DROP, roam_l4_csum and roam_xmit
 * (next hop and out).
 */
static __always_inline int roam_process(ROAM_CTX *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};

	int rc = parse_packet(data, data_end, ROAM_WIRE_LEN(ctx), &p);
	if (rc == PARSE_SKIP)
		return VERDICT_PASS;
	if (rc != PARSE_OK) {
		count_reason(p.reason);
		return VERDICT_PASS;
	}

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&roam_config, &zero);
	if (!cfg)
		return VERDICT_PASS;
	__u64 idle = cfg->idle_timeout_ns ? cfg->idle_timeout_ns : DEFAULT_IDLE_TIMEOUT_NS;
	/* CLOCK_MONOTONIC at tick resolution: ample for idle timeouts, and much cheaper than bpf_ktime_get_ns under kvm-clock. */
	__u64 now = bpf_ktime_get_coarse_ns();

	/* One conntrack lookup with the packet's own tuple finds either a reply (reverse) or a pinned flow (forward). */
	struct ct_key k = {};
	ct_key_from_pkt(&k, &p);
	struct ct_value *cv = bpf_map_lookup_elem(&roam_conntrack, &k);

	if (cv && cv->dir == CT_REVERSE && !ct_expired(cv, now, idle)) {
		/* Reply from a target: source back to the frontend, destination back to the client. */
		__u8 client[16], front[16];
		__builtin_memcpy(client, cv->peer_addr, 16);
		__builtin_memcpy(front, cv->nat_addr, 16);
		__be16 cport = cv->peer_port, fport = cv->nat_port;
		__u32 id = cv->frontend_id;
		ct_touch(cv, &p, now);
		if (rewrite(ctx, &p, front, fport, client, cport) < 0) {
			count_reason(REASON_MALFORMED);
			return VERDICT_PASS;
		}
		return roam_xmit(ctx, &p, id, ACTION_REVERSE);
	}

	__u8 kind, dst[16], src[16];
	__be16 dport, sport;
	__u32 id;

	if (cv && cv->dir == CT_FORWARD && !ct_expired(cv, now, idle) && !ct_is_new_syn(cv, &p)) {
		/*
		 * Pinned flow: keeps the target it started with, whatever was
		 * committed since. No service lookup: Remove deletes a frontend's
		 * conntrack entries with it.
		 */
		id = cv->frontend_id;
		kind = cv->kind;
		__builtin_memcpy(dst, cv->peer_addr, 16);
		__builtin_memcpy(src, cv->nat_addr, 16);
		dport = cv->peer_port;
		sport = cv->nat_port;
		ct_touch(cv, &p, now);
		if (kind == TARGET_REDIRECT && (p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) && p.proto == IPPROTO_TCP_) {
			struct ct_key rk = {};
			ct_reverse_key_of(&rk, cv, p.proto);
			struct ct_value *rv = bpf_map_lookup_elem(&roam_conntrack, &rk);
			if (rv)
				ct_touch(rv, &p, now);
		}
	} else {
		/* New flow (or an expired one): take the active target and pin it. */
		struct frontend_key fk = {};
		__builtin_memcpy(fk.addr, p.daddr, 16);
		fk.port = p.dport;
		fk.proto = p.proto;
		fk.family = p.family;
		struct service *svc = bpf_map_lookup_elem(&roam_services, &fk);
		if (!svc)
			return VERDICT_PASS;

		/* Copy the id and the active target to the stack at once (see roam_services in maps.h). */
		id = svc->id;
		struct target t;
		__builtin_memcpy(&t, &svc->slot[svc->active & 1], sizeof(t));

		if (cv && cv->dir == CT_FORWARD && cv->kind == TARGET_REDIRECT) {
			/* Free the expired flow's SNAT port, unless another flow has taken it over since. */
			struct ct_key old = {};
			ct_reverse_key_of(&old, cv, p.proto);
			struct ct_value *orv = bpf_map_lookup_elem(&roam_conntrack, &old);
			if (orv && orv->dir == CT_REVERSE && orv->peer_port == p.sport &&
			    addr_eq(orv->peer_addr, p.saddr))
				bpf_map_delete_elem(&roam_conntrack, &old);
		}
		kind = t.kind;
		if (kind == TARGET_NONE) {
			count_action(id, ACTION_PASS, p.len);
			return VERDICT_PASS;
		}
		struct ct_value fv = {};
		fv.kind = kind;
		fv.dir = CT_FORWARD;
		fv.family = p.family;
		fv.frontend_id = id;
		fv.last_seen = now;
		ct_touch(&fv, &p, now);
		if (kind == TARGET_REDIRECT) {
			if (t.family != p.family) {
				count_reason(REASON_FAMILY_MISMATCH);
				count_action(id, ACTION_DROP, p.len);
				return VERDICT_DROP;
			}
			if (p.family == FAMILY_V4 ? !cfg->has_snat4 : !cfg->has_snat6) {
				count_reason(REASON_NO_SNAT);
				count_action(id, ACTION_DROP, p.len);
				return VERDICT_DROP;
			}
			if (cfg->port_min == 0 || cfg->port_max < cfg->port_min) {
				count_reason(REASON_NO_CONFIG);
				count_action(id, ACTION_PASS, p.len);
				return VERDICT_PASS;
			}
			__builtin_memcpy(dst, t.addr, 16);
			__builtin_memcpy(src, p.family == FAMILY_V4 ? cfg->snat4 : cfg->snat6, 16);
			dport = t.port;

			struct ct_key rk = {};
			__builtin_memcpy(rk.saddr, dst, 16);
			__builtin_memcpy(rk.daddr, src, 16);
			rk.sport = dport;
			rk.proto = p.proto;
			rk.family = p.family;
			struct ct_value rv = fv;
			rv.dir = CT_REVERSE;
			__builtin_memcpy(rv.peer_addr, p.saddr, 16);
			__builtin_memcpy(rv.nat_addr, p.daddr, 16);
			rv.peer_port = p.sport;
			rv.nat_port = p.dport;

			sport = snat_alloc(&rk, &rv, &p, cfg, now, idle);
			if (!sport) {
				count_reason(REASON_PORT_EXHAUSTED);
				count_action(id, ACTION_DROP, p.len);
				return VERDICT_DROP;
			}
			__builtin_memcpy(fv.peer_addr, dst, 16);
			__builtin_memcpy(fv.nat_addr, src, 16);
			fv.peer_port = dport;
			fv.nat_port = sport;
			if (bpf_map_update_elem(&roam_conntrack, &k, &fv, BPF_ANY) != 0) {
				bpf_map_delete_elem(&roam_conntrack, &rk);
				count_reason(REASON_CT_FULL);
				count_action(id, ACTION_DROP, p.len);
				return VERDICT_DROP;
			}
		} else {
			/* Local: pin it too, so a commit away from local leaves this flow here. */
			if (bpf_map_update_elem(&roam_conntrack, &k, &fv, BPF_ANY) != 0)
				count_reason(REASON_CT_FULL);
			count_action(id, ACTION_PASS, p.len);
			return VERDICT_PASS;
		}
	}

	if (kind != TARGET_REDIRECT) {
		count_action(id, ACTION_PASS, p.len);
		return VERDICT_PASS;
	}
	if (rewrite(ctx, &p, src, sport, dst, dport) < 0) {
		count_reason(REASON_MALFORMED);
		return VERDICT_PASS;
	}
	return roam_xmit(ctx, &p, id, ACTION_REDIRECT);
}
