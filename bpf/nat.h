/* nat.h: SNAT ports (allocation, takeover of finished flows' ports, release) and the in-place rewrite with checksum updates. */
#pragma once

#include "conntrack.h"
#include "counters.h"
#include "csum.h"

/* tuple_hash mixes the client side of a flow to pick the first SNAT port to try. */
static __always_inline __u32 tuple_hash(const struct pkt *p)
{
	__u32 w[4];
	__builtin_memcpy(w, p->saddr, 16);
	__u32 h = 2166136261u;
	h = (h ^ w[0]) * 16777619u;
	h = (h ^ w[1]) * 16777619u;
	h = (h ^ w[2]) * 16777619u;
	h = (h ^ w[3]) * 16777619u;
	h = (h ^ ((__u32)p->sport << 16 | p->dport)) * 16777619u;
	h ^= h >> 15;
	return h;
}

/*
 * nat_reclaimable: the flow holding the NAT entry nv (at rk) is over in
 * both directions: its forward entry (*owner, set when it still points
 * here) has been idle in both directions for its state's timeout. A NAT
 * entry whose forward entry is gone or points elsewhere is reclaimable
 * once it has been idle for the close timeout (a new flow inserts its NAT
 * entry a moment before its forward entry).
 */
static __always_inline int nat_reclaimable(const struct nat_value *nv, const struct ct_key *rk, struct ct_key *owner,
					   __u64 now, const struct config *cfg)
{
	flow_key_of(owner, nv, rk->proto);
	struct ct_value *ov = bpf_map_lookup_elem(&roam_conntrack, owner);
	if (!ov || !nat_belongs(ov, rk)) {
		owner->proto = 0; /* nothing to delete */
		return idle_longer(now, nv->last_seen, cfg->tcp_close_ns);
	}
	__u64 timeout = ct_timeout(cfg, rk->proto, ov->state, ov->kind);
	return idle_longer(now, ov->last_seen, timeout) && idle_longer(now, nv->last_seen, timeout);
}

/*
 * snat_alloc inserts the NAT entry rk/rv with a port from the configured
 * range: BPF_NOEXIST makes the claim of a free port collision-safe; a port
 * whose flow is over in both directions is taken over, claimed by a
 * compare-and-swap of its last_seen so two CPUs cannot both take it, and
 * the old flow's forward entry is deleted. Returns the port (network
 * order) or 0.
 */
static __always_inline __be16 snat_alloc(struct ct_key *rk, struct nat_value *rv, const struct pkt *p,
					 const struct config *cfg, __u64 now)
{
	__u32 min = cfg->port_min;
	__u32 range = (__u32)cfg->port_max - min + 1;
	__u32 h = tuple_hash(p);
	struct scratch *sc = scratch();
	if (!sc)
		return 0;
	struct ct_key *owner = &sc->owner;

#pragma clang loop unroll(disable)
	for (int i = 0; i < PORT_RETRIES; i++) {
		__u16 port = min + (h + (__u32)i * 7919u) % range;
		rk->dport = bpf_htons(port);
		if (bpf_map_update_elem(&roam_nat, rk, rv, BPF_NOEXIST) == 0)
			return rk->dport;
		struct nat_value *old = bpf_map_lookup_elem(&roam_nat, rk);
		if (!old)
			continue;
		__u64 seen = old->last_seen;
		if (!nat_reclaimable(old, rk, owner, now, cfg))
			continue;
		if (__sync_val_compare_and_swap(&old->last_seen, seen, now) != seen)
			continue; /* touched meanwhile: a reply, or another CPU's claim */
		if (bpf_map_update_elem(&roam_nat, rk, rv, BPF_EXIST) != 0)
			continue;
		if (owner->proto)
			bpf_map_delete_elem(&roam_conntrack, owner);
		return rk->dport;
	}
	return 0;
}

/* nat_release frees a finished flow's port (its forward entry v, key k) unless another flow has taken it over. */
static __always_inline void nat_release(const struct ct_value *v, const struct ct_key *k)
{
	struct scratch *sc = scratch();
	if (!sc)
		return;
	nat_key_of(&sc->nk, v, k->proto);
	struct nat_value *nv = bpf_map_lookup_elem(&roam_nat, &sc->nk);
	if (nv && nat_owned_by(nv, k))
		bpf_map_delete_elem(&roam_nat, &sc->nk);
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

	__builtin_memcpy(p->saddr, ns, 16);
	__builtin_memcpy(p->daddr, nd, 16);
	p->sport = nsport;
	p->dport = ndport;
	if (ROAM_ABLATE & ABLATE_CSUM)
		return 0;
	return roam_l4_csum(ctx, p, l4, diff_l3, diff_ports);
}
