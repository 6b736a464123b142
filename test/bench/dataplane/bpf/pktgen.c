/* pktgen.c: the benchmark's packet generator (BPF_PROG_TEST_RUN with live frames), its sink, and the reference programs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define GEN_HDR_LEN 64 /* bytes of the frame rewritten on every run: Ethernet, IP, UDP headers and the payload's start */

#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define IPPROTO_UDP_ 17

/* Offsets in an Ethernet frame without VLAN tag, IPv4 without options, IPv6 without extension headers. */
#define IP4_CHECK 24
#define IP4_SADDR 26
#define IP4_DADDR 30
#define UDP4 34
#define IP6_SADDR_LO 34 /* low 32 bits of the IPv6 source */
#define IP6_SADDR 22
#define IP6_DADDR 38
#define UDP6 54

/* The first client port; a flow's client is (source address + client / CLIENT_PORTS, CLIENT_PORT0 + client % CLIENT_PORTS). */
#define CLIENT_PORT0 1024
#define CLIENT_PORTS 64512

/* gen_config: what the generator sends; written by Go before every run. */
struct gen_config {
	__u8 hdr[GEN_HDR_LEN]; /* flow 0's frame: checksums valid */
	__u64 first;	       /* index of the first flow */
	__u64 flows;	       /* flow first + seq % flows is sent by run seq; 0: every run a new flow */
	__u32 frontends;       /* flow i goes to the frontend port of flow 0 + i % frontends */
	__u32 verdict;	       /* XDP_TX sends the frame; XDP_DROP measures the generator alone */
	__u32 family;	       /* 4 or 6 */
	__u32 pad;
};

/* sink_config: which frames the sink counts as delivered (zero fields match anything). */
struct sink_config {
	__u8 daddr[16]; /* IPv4 in the first 4 bytes */
	__u8 saddr[16];
	__u16 port_min; /* UDP destination ports, host order */
	__u16 port_max;
	__u32 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_cfg SEC(".maps");

/* gen_seq: runs so far (one CPU runs the generator, so a plain array). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_config);
} sink_cfg SEC(".maps");

/* sink_count: [0] frames that matched sink_config, [1] anything else. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

/* csum_delta is ~old + new for one 16-bit word, to be folded into a checksum (RFC 1624). */
static __always_inline __u32 csum_delta(__u16 old, __u16 new)
{
	return (__u16)~old + (__u32) new;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
	__u32 s = (__u16)~check + delta;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/*
 * bench_gen writes flow 0's headers into the frame (live frames are recycled
 * and the forwarders rewrite them in place), then makes it flow i: source
 * address and port from the client number, destination port from the
 * frontend, checksums updated incrementally.
 */
SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct gen_config *c = bpf_map_lookup_elem(&gen_cfg, &zero);
	__u64 *seq = bpf_map_lookup_elem(&gen_seq, &zero);
	if (!c || !seq || data + GEN_HDR_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, c->hdr, GEN_HDR_LEN);

	__u64 i = c->first + (c->flows ? *seq % c->flows : *seq);
	*seq += 1;
	__u32 fronts = c->frontends ? c->frontends : 1;
	__u64 client = i / fronts;
	__u16 sport = bpf_htons(CLIENT_PORT0 + (__u16)(client % CLIENT_PORTS));
	__u32 host = (__u32)(client / CLIENT_PORTS);

	__u32 l4 = c->family == 6 ? UDP6 : UDP4;
	__u32 src_lo = c->family == 6 ? IP6_SADDR_LO : IP4_SADDR;
	__be16 *ports = data + l4;
	__be32 *saddr = data + src_lo;
	__u16 *ucheck = data + l4 + 6;
	if ((void *)(ports + 4) > data_end || (void *)(saddr + 1) > data_end)
		return XDP_ABORTED;

	__u16 dport = bpf_htons(bpf_ntohs(ports[1]) + (__u16)(i % fronts));
	__be32 old_src = *saddr;
	__be32 new_src = bpf_htonl(bpf_ntohl(old_src) + host);
	__u32 d_addr = csum_delta(old_src >> 16, new_src >> 16) + csum_delta(old_src & 0xffff, new_src & 0xffff);
	__u32 d = d_addr + csum_delta(ports[0], sport) + csum_delta(ports[1], dport);
	ports[0] = sport;
	ports[1] = dport;
	*saddr = new_src;
	__u16 uc = csum_apply(*ucheck, d);
	*ucheck = uc ? uc : 0xffff;
	if (c->family == 4) {
		__u16 *ipcheck = data + IP4_CHECK;
		*ipcheck = csum_apply(*ipcheck, d_addr);
	}
	return c->verdict;
}

static __always_inline int bytes_match(const __u8 *want, const __u8 *got, int n)
{
	__u8 any = 0, diff = 0;
#pragma unroll
	for (int k = 0; k < 16; k++) {
		if (k < n) {
			any |= want[k];
			diff |= want[k] ^ got[k];
		}
	}
	return !any || !diff;
}

/* bench_sink counts frames (matching sink_config or not) and drops them. */
SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, slot = 1;
	struct sink_config *c = bpf_map_lookup_elem(&sink_cfg, &zero);
	if (!c || data + UDP6 + 4 > data_end)
		goto count;
	__be16 proto = *(__be16 *)(data + 12);
	__u16 dport = 0;
	if (proto == bpf_htons(ETH_P_IP_) && c->family == 4 && *(__u8 *)(data + 23) == IPPROTO_UDP_) {
		if (!bytes_match(c->daddr, data + IP4_DADDR, 4) || !bytes_match(c->saddr, data + IP4_SADDR, 4))
			goto count;
		dport = bpf_ntohs(*(__be16 *)(data + UDP4 + 2));
	} else if (proto == bpf_htons(ETH_P_IPV6_) && c->family == 6 && *(__u8 *)(data + 20) == IPPROTO_UDP_) {
		if (!bytes_match(c->daddr, data + IP6_DADDR, 16) || !bytes_match(c->saddr, data + IP6_SADDR, 16))
			goto count;
		dport = bpf_ntohs(*(__be16 *)(data + UDP6 + 2));
	} else {
		goto count;
	}
	if (dport >= c->port_min && dport <= c->port_max)
		slot = 0;
count:;
	__u64 *n = bpf_map_lookup_elem(&sink_count, &slot);
	if (n)
		*n += 1;
	return XDP_DROP;
}

/* minfwd_config: what bench_minfwd writes into every frame. */
struct minfwd_config {
	__u8 macs[12];	  /* destination then source */
	__be16 sport, dport;
	__be32 saddr[4];  /* IPv4 in saddr[0] */
	__be32 daddr[4];
	__u32 ifindex;	  /* bpf_redirect to it; 0: XDP_TX */
	__u32 floor_mask; /* bench_floor: floor_table's size less one (a power of two) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct minfwd_config);
} minfwd_cfg SEC(".maps");

/*
 * minfwd is the least a NAT forwarder does per packet, the yardstick of
 * roam's program cost (issue 16: 12-14 ns under BPF_PROG_TEST_RUN): check
 * the headers' bounds, rewrite addresses, ports and MACs from one map
 * lookup with incremental checksum updates, redirect. No parsing beyond
 * the EtherType and protocol, no flow state, no route lookup.
 */
static __always_inline int minfwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct minfwd_config *c = bpf_map_lookup_elem(&minfwd_cfg, &zero);
	if (!c || data + UDP6 + 20 > data_end)
		return XDP_PASS;
	__be16 proto = *(__be16 *)(data + 12);
	__u32 d_addr = 0, l4;
	__u8 l4proto;
	if (proto == bpf_htons(ETH_P_IP_)) {
		__u16 *old = data + IP4_SADDR, *new_s = (__u16 *)c->saddr, *new_d = (__u16 *)c->daddr;
		d_addr = csum_delta(old[0], new_s[0]) + csum_delta(old[1], new_s[1]) + csum_delta(old[2], new_d[0]) +
			 csum_delta(old[3], new_d[1]);
		__builtin_memcpy(data + IP4_SADDR, c->saddr, 4);
		__builtin_memcpy(data + IP4_DADDR, c->daddr, 4);
		__u16 *ipcheck = data + IP4_CHECK;
		*ipcheck = csum_apply(*ipcheck, d_addr);
		l4 = UDP4;
		l4proto = *(__u8 *)(data + 23);
	} else if (proto == bpf_htons(ETH_P_IPV6_)) {
		__s64 d = bpf_csum_diff(data + IP6_SADDR, 32, (__be32 *)c->saddr, 32, 0);
		if (d < 0)
			return XDP_PASS;
		d_addr = (__u32)d;
		__builtin_memcpy(data + IP6_SADDR, c->saddr, 32);
		l4 = UDP6;
		l4proto = *(__u8 *)(data + 20);
	} else {
		return XDP_PASS;
	}
	__be16 *ports = data + l4;
	__u16 *check = data + l4 + (l4proto == IPPROTO_UDP_ ? 6 : 16);
	if ((void *)(ports + 2) > data_end || (void *)(check + 1) > data_end)
		return XDP_PASS;
	__u32 d = d_addr + csum_delta(ports[0], c->sport) + csum_delta(ports[1], c->dport);
	ports[0] = c->sport;
	ports[1] = c->dport;
	*check = csum_apply(*check, d);
	__builtin_memcpy(data, c->macs, 12);
	return c->ifindex ? bpf_redirect(c->ifindex, 0) : XDP_TX;
}

SEC("xdp")
int bench_minfwd(struct xdp_md *ctx)
{
	return minfwd(ctx);
}

/*
 * The one-read flow table (bench_floor): entries of 16 bytes, a flow's
 * whole state in one read at a place hashed from its client's address and
 * both ports: the most compact table a BPF program can keep, an array map (no
 * bucket to read before the entry). Go sizes it (1M entries: 16 MiB) for
 * the floor path's object only.
 */
struct floor_entry {
	__u32 client;	/* the client's address (a real table would compare it) */
	__be16 port;	/* and port */
	__be16 snat_port;
	__u32 target;
	__u32 seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct floor_entry);
} floor_table SEC(".maps");

/*
 * bench_floor is bench_minfwd after one dependent read of the flow's
 * entry in the one-read table: what any forwarder whose flows are in a
 * table pays at least per packet. Its rate with many flows against few
 * is the floor under a 1M-flow figure on this machine.
 */
SEC("xdp")
int bench_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + UDP6 + 4 > data_end)
		return XDP_PASS;
	__be16 proto = *(__be16 *)(data + 12);
	__u32 client, ports; /* the flow: its client's address, both ports (the generator's flows differ in all three) */
	if (proto == bpf_htons(ETH_P_IP_)) {
		client = *(__u32 *)(data + IP4_SADDR);
		ports = *(__u32 *)(data + UDP4);
	} else {
		client = *(__u32 *)(data + IP6_SADDR_LO);
		ports = *(__u32 *)(data + UDP6);
	}
	__u32 h = (client * 0x9e3779b1u) ^ ports;
	h = (h ^ (h >> 16)) * 0x85ebca6bu;
	h = (h ^ (h >> 13)) * 0xc2b2ae35u;
	__u32 zero = 0;
	struct minfwd_config *c = bpf_map_lookup_elem(&minfwd_cfg, &zero);
	if (!c)
		return XDP_PASS;
	__u32 slot = (h ^ (h >> 16)) & c->floor_mask;
	struct floor_entry *e = bpf_map_lookup_elem(&floor_table, &slot);
	if (!e)
		return XDP_PASS;
	/* The verdict depends on the entry, as a forwarder's does on its flow's: the read cannot be skipped. */
	if (*(volatile __u32 *)&e->target == 0xffffffffu)
		return XDP_DROP;
	return minfwd(ctx);
}

/*
 * A conntrack lookup alone, by key size (-ablate): roam's key (40 bytes:
 * IPv4-mapped addresses, ports, protocol, family) against a compact IPv4
 * key (16 bytes), in hash maps as roam's (not preallocated, the agent's
 * default size), values of roam's size. Go inserts the bench packet's
 * flow in both; the program builds the key from the packet and looks it up.
 */
struct key40 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport, dport;
	__u8 proto, family;
	__u16 pad;
};

struct key16 {
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u8 proto, family;
	__u16 pad;
};

struct ct_like {
	__u64 w[10]; /* 80 bytes, as struct ct_value */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct key40);
	__type(value, struct ct_like);
} ct40 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct key16);
	__type(value, struct ct_like);
} ct16 SEC(".maps");

#define IP4_PROTO 23

/* ct_probe looks the packet's flow up with roam's key (compact 0) or the compact one (1). */
static __always_inline int ct_probe(struct xdp_md *ctx, int compact)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + UDP4 + 4 > data_end)
		return XDP_PASS;
	struct ct_like *v;
	if (compact) {
		struct key16 k = {};
		__builtin_memcpy(&k.saddr, data + IP4_SADDR, 8);
		__builtin_memcpy(&k.sport, data + UDP4, 4);
		k.proto = *(__u8 *)(data + IP4_PROTO);
		k.family = 4;
		v = bpf_map_lookup_elem(&ct16, &k);
	} else {
		struct key40 k = {};
		k.saddr[10] = k.saddr[11] = k.daddr[10] = k.daddr[11] = 0xff;
		__builtin_memcpy(k.saddr + 12, data + IP4_SADDR, 4);
		__builtin_memcpy(k.daddr + 12, data + IP4_DADDR, 4);
		__builtin_memcpy(&k.sport, data + UDP4, 4);
		k.proto = *(__u8 *)(data + IP4_PROTO);
		k.family = 4;
		v = bpf_map_lookup_elem(&ct40, &k);
	}
	return v && v->w[0] != 0xffffffffffffffffull ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int bench_ct40(struct xdp_md *ctx)
{
	return ct_probe(ctx, 0);
}

SEC("xdp")
int bench_ct16(struct xdp_md *ctx)
{
	return ct_probe(ctx, 1);
}

/* bench_drop and bench_pass: the reference path's end, and the XDP program the kernel paths keep on their veths. */
SEC("xdp")
int bench_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
