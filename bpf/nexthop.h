/* nexthop.h: the XDP program's per-CPU next-hop cache, so that bpf_fib_lookup runs about once a second per route, not per packet. */
#pragma once

#include "conntrack.h"
#include "fib.h"

#ifndef NH_CACHE_SLOTS
#define NH_CACHE_SLOTS 1024 /* per CPU, direct-mapped; a power of two */
#endif

#ifndef NH_CACHE_NS
#define NH_CACHE_NS 1000000000ULL /* how long a lookup's result is reused: a route or neighbour change takes effect within it */
#endif

/*
 * One bpf_fib_lookup result, for the addresses, protocol and ingress
 * interface it was looked up with (the lookup's inputs but the ports and
 * the length): the egress interface and both MAC addresses. max_len is the
 * longest IP packet the lookup's MTU check passed; a longer one is looked
 * up again (and may get BPF_FIB_LKUP_RET_FRAG_NEEDED). Only successful
 * lookups are cached: no neighbour, no route, not forwarded and
 * fragmentation needed are asked again on every packet. Laid out for
 * word loads: in_ifindex, proto and family are compared as one word, the
 * MAC addresses copied as two.
 */
struct nh_entry {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 in_ifindex;
	__u8 proto;
	__u8 family;
	__u16 max_len;
	__u8 macs[2 * ETH_ALEN_]; /* destination then source, as in an Ethernet header */
	__u32 out_ifindex; /* NH_OUT_POD set: the egress is a local pod's veth (iface_is_pod) */
	__u64 stamp; /* bpf_ktime_get_coarse_ns of the lookup; 0: empty */
};

#define NH_OUT_POD 0x80000000u /* in nh_entry.out_ifindex (ifindexes are positive ints) */

/* Not pinned: a cache, each loaded object has its own and starts empty. */
ROAM_LOCAL_MAP(roam_nexthop, BPF_MAP_TYPE_PERCPU_ARRAY, NH_CACHE_SLOTS, __u32, struct nh_entry, 0);

/*
 * nh_slot hashes all 16 bytes of both addresses and the ingress interface:
 * SIDs from one locator differ only in their first 8 bytes (lb.NodeSID's
 * end in ::1), IPv4 and IPv6 interface ids in their last 8. Multiply-shift
 * (Dietzfelbinger): each 8-byte half times its own odd constant, summed,
 * the slot from the top bits, which depend on every bit of every half. The
 * products are independent, so this costs about one multiply's latency; a
 * chain of murmur3-like rounds over the same words (479f538) cost
 * 6-13 ns per packet more (bench-dataplane -ablate -ablate-src).
 */
static __always_inline __u32 nh_slot(const struct xlate *x, __u32 ifindex)
{
	const __u64 *s = (const __u64 *)x->src, *d = (const __u64 *)x->dst; /* 8-byte aligned (struct xlate) */
	__u64 h = ifindex * 0x9e3779b97f4a7c15ULL + s[0] * 0xbf58476d1ce4e5b9ULL + s[1] * 0x94d049bb133111ebULL +
		  d[0] * 0xc2b2ae3d27d4eb4fULL + d[1] * 0x165667b19e3779f9ULL;
	return h >> (64 - __builtin_ctz(NH_CACHE_SLOTS));
}

/* nh_tag is an entry's in_ifindex, proto and family as one little-endian word (max_len masked off). */
static __always_inline __u64 nh_tag(__u32 ifindex, const struct pkt *p)
{
	return (__u64)ifindex | (__u64)p->proto << 32 | (__u64)p->family << 40;
}

static __always_inline int nh_match(const struct nh_entry *e, const struct xlate *x, __u64 tag)
{
	const __u64 *a = (const __u64 *)e->saddr, *b = (const __u64 *)x->src; /* saddr then daddr in both, 8-byte aligned */
	return (((*(const __u64 *)&e->in_ifindex ^ tag) & 0xffffffffffffULL) | (a[0] ^ b[0]) | (a[1] ^ b[1]) |
		(a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/*
 * nh_lookup finds the next hop of packet p arriving on ifindex once it is
 * translated as x says (the lookup comes before the rewrite): from this
 * CPU's cache when a lookup of the same inputs succeeded less than
 * NH_CACHE_NS ago for a packet at least as long, else by bpf_fib_lookup
 * (a success is cached). Returns BPF_FIB_LKUP_RET_SUCCESS with
 * *out_ifindex and the frame's MAC addresses set, the lookup's code
 * otherwise (*mtu: the MTU a BPF_FIB_LKUP_RET_FRAG_NEEDED names), or -1 if
 * the frame is shorter than an Ethernet header. *pod says whether the
 * egress is a local pod's veth. fib: where a lookup is made (zeroed
 * here), the caller's (nh_lookup: on the stack; a caller short of stack:
 * per-CPU scratch).
 */
static __always_inline long nh_lookup_in(struct xdp_md *ctx, struct pkt *p, const struct xlate *x, __u32 ifindex,
					 __u64 now, __u32 *out_ifindex, __u32 *mtu, __u32 *pod, struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u32 slot = nh_slot(x, ifindex);
	struct nh_entry *e = (ROAM_ABLATE & ABLATE_NH_CACHE) ? NULL : bpf_map_lookup_elem(&roam_nexthop, &slot);
	int same = e && e->stamp && nh_match(e, x, nh_tag(ifindex, p)) && !idle_longer(now, e->stamp, NH_CACHE_NS);
	if (same && p->ip_len <= e->max_len) {
		*out_ifindex = e->out_ifindex & ~NH_OUT_POD;
		*pod = (e->out_ifindex & NH_OUT_POD) != 0;
		if (*pod)
			return BPF_FIB_LKUP_RET_SUCCESS; /* the frame stays as it came */
		/* Unaligned packet stores are fine where XDP runs natively (the verifier is not strict there). */
		*(__u64 *)eth = *(const __u64 *)e->macs;
		*(__u32 *)((__u8 *)eth + 8) = *(const __u32 *)(e->macs + 8);
		return BPF_FIB_LKUP_RET_SUCCESS;
	}
	__builtin_memset(fib, 0, sizeof(*fib)); /* only here, off the cached path */
	fib_params(fib, p, x->src, x->dst, x->sport, x->dport, ifindex, p->ip_len);
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	*out_ifindex = fib->ifindex;
	*mtu = fib->mtu_result;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return rc;
	*pod = fib->ifindex != ifindex && iface_is_pod(fib->ifindex);
	if (!*pod && set_macs(data, data_end, fib) < 0)
		return -1;
	if (!e)
		return rc;
	__builtin_memcpy(e->saddr, x->src, 16);
	__builtin_memcpy(e->daddr, x->dst, 16);
	e->in_ifindex = ifindex;
	e->proto = p->proto;
	e->family = p->family;
	e->max_len = p->ip_len;
	__builtin_memcpy(e->macs, fib->dmac, ETH_ALEN_);
	__builtin_memcpy(e->macs + ETH_ALEN_, fib->smac, ETH_ALEN_);
	e->out_ifindex = fib->ifindex | (*pod ? NH_OUT_POD : 0);
	e->stamp = now;
	return rc;
}

static __always_inline long nh_lookup(struct xdp_md *ctx, struct pkt *p, const struct xlate *x, __u32 ifindex,
				      __u64 now, __u32 *out_ifindex, __u32 *mtu, __u32 *pod)
{
	struct bpf_fib_lookup fib;
	return nh_lookup_in(ctx, p, x, ifindex, now, out_ifindex, mtu, pod, &fib);
}
