/* nat.h: SNAT port allocation and the in-place address/port rewrite with checksum updates. */
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
 * snat_alloc inserts the reverse entry rk/rv with a free SNAT port from the
 * configured range: BPF_NOEXIST makes the claim collision-safe; an occupied
 * but idle-expired entry is taken over. Returns the port (network order) or 0.
 */
static __always_inline __be16 snat_alloc(struct ct_key *rk, struct ct_value *rv, const struct pkt *p,
					 const struct config *cfg, __u64 now, __u64 idle)
{
	__u32 min = cfg->port_min;
	__u32 range = (__u32)cfg->port_max - min + 1;
	__u32 h = tuple_hash(p);

	for (int i = 0; i < PORT_RETRIES; i++) {
		__u16 port = min + (h + (__u32)i * 7919u) % range;
		rk->dport = bpf_htons(port);
		if (bpf_map_update_elem(&roam_conntrack, rk, rv, BPF_NOEXIST) == 0)
			return rk->dport;
		struct ct_value *old = bpf_map_lookup_elem(&roam_conntrack, rk);
		if (old && ct_expired(old, now, idle) &&
		    bpf_map_update_elem(&roam_conntrack, rk, rv, BPF_EXIST) == 0)
			return rk->dport;
	}
	return 0;
}

/*
 * rewrite sets the packet's source to ns:nsport and destination to nd:ndport
 * (IPv4-mapped for IPv4), fixing the IPv4 header checksum here and the L4
 * checksum through the attach point's roam_l4_csum (XDP: arithmetic in
 * place; tc: bpf_l4_csum_replace, correct for CHECKSUM_PARTIAL too).
 * Returns 0, or -1 if the packet is shorter than parsed (cannot happen).
 */
static __always_inline int rewrite(ROAM_CTX *ctx, struct pkt *p, const __u8 *ns, __be16 nsport, const __u8 *nd,
				   __be16 ndport)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 old_ports = (__u32)p->sport | ((__u32)p->dport << 16);
	__u32 new_ports = (__u32)nsport | ((__u32)ndport << 16);
	__u32 diff_ports = csum_diff16((__u16 *)&old_ports, (__u16 *)&new_ports, 2);
	__u32 diff_l3;

	if (p->family == FAMILY_V4) {
		struct ip4_hdr *iph = data + L3_OFF;
		if ((void *)(iph + 1) > data_end)
			return -1;
		diff_l3 = csum_diff16((__u16 *)&iph->saddr, (const __u16 *)(ns + 12), 2) +
			  csum_diff16((__u16 *)&iph->daddr, (const __u16 *)(nd + 12), 2);
		__builtin_memcpy(&iph->saddr, ns + 12, 4);
		__builtin_memcpy(&iph->daddr, nd + 12, 4);
		iph->check = csum_update(iph->check, diff_l3);
	} else {
		struct ip6_hdr *ip6 = data + L3_OFF;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		/* 32 bytes: the helper keeps the program small where inline sums would spill. */
		diff_l3 = bpf_csum_diff((__be32 *)ip6->saddr, 16, (__be32 *)ns, 16, 0);
		diff_l3 = bpf_csum_diff((__be32 *)ip6->daddr, 16, (__be32 *)nd, 16, diff_l3);
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
	return roam_l4_csum(ctx, p, l4, diff_l3, diff_ports);
}
