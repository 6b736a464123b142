/* types.h: structs shared by the BPF programs and Go (bpf2go -type): map keys, values, packet headers. */
#pragma once

#include "consts.h"

/* Frontend: what users hit. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). */
struct frontend_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* One target slot: local, or redirect to addr:port. */
struct target {
	__u8 addr[16];
	__be16 port;
	__u8 kind;
	__u8 family;
};

/* A frontend's service: two slots, the active index, an id for counters and the stage generation. */
struct service {
	struct target slot[2];
	__u32 active;
	__u32 id;
	__u64 generation;
};

/* Conntrack key: one direction of a flow as it is seen on the wire. */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/*
 * Conntrack value. Forward (client -> frontend): peer = target, nat = SNAT address and port.
 * Reverse (target -> SNAT): peer = client, nat = frontend.
 */
struct ct_value {
	__u8 peer_addr[16];
	__u8 nat_addr[16];
	__be16 peer_port;
	__be16 nat_port;
	__u8 kind;
	__u8 dir;
	__u8 flags;
	__u8 family;
	__u32 frontend_id;
	__u32 pad;
	__u64 last_seen; /* bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC, tick resolution */
};

/* Node configuration, written by Go at Open. */
struct config {
	__u8 snat4[16]; /* IPv4-mapped; all zero when unset */
	__u8 snat6[16];
	__u16 port_min; /* host order */
	__u16 port_max;
	__u8 has_snat4;
	__u8 has_snat6;
	__u16 pad;
	__u64 idle_timeout_ns;
};

/* Per-CPU packet and byte counters of one frontend x action. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Minimal wire headers (no kernel uapi includes beyond linux/bpf.h). */
struct eth_hdr {
	__u8 dst[ETH_ALEN_];
	__u8 src[ETH_ALEN_];
	__be16 proto;
};

struct ip4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ip6_hdr {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tcp_hdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};
