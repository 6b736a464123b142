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

/*
 * One target slot: local, redirect to addr:port, or an SRv6 path (sids in
 * the order visited, nsegs of them; srv6.h).
 */
struct target {
	__u8 addr[16];
	__be16 port;
	enum target_kind kind;
	__u8 family;
	__u8 nsegs;
	__u8 pad;
	__u16 counter; /* a redirect's index in roam_target_counters (Go assigns it at Stage; 0: not counted) */
	__u8 sids[2][16];
};

/*
 * A frontend's record (roam_service_slots, at index id): two slots, the
 * active index, its id (for counters; the same as the index), the last
 * generation Stage issued and the generation each slot was staged with (a
 * commit or an abort names the generation it acts on; 0 for the inactive
 * slot: nothing staged). Programs read only slot and active.
 */
struct service {
	struct target slot[2];
	__u32 active;
	__u32 id;
	__u64 generation;
	__u64 slot_gen[2];
};

/*
 * A flow's tuple as the programs lay it out: the addresses (IPv4-mapped for
 * IPv4), the ports, then protocol and family. struct ct_key and struct pkt
 * (parse.h) both start with it, so a packet's key is one copy (conntrack.h
 * ct_key_set).
 */
#define FLOW_TUPLE        \
	__u8 saddr[16];   \
	__u8 daddr[16];   \
	__be16 sport;     \
	__be16 dport;     \
	__u8 proto;       \
	__u8 family

/*
 * Conntrack and NAT key: one direction of a flow as it is seen on the wire.
 * Its first 36 bytes (addresses, then ports) are laid out as in struct pkt,
 * struct ct_value and struct nat_value (conntrack.h ct_key_set).
 * roam_conntrack: client -> frontend. roam_nat: target -> SNAT address and port.
 * Both hold IPv6 flows only; IPv4 flows are in roam_ct4 and roam_nat4 under
 * struct ct4_key.
 */
struct ct_key {
	FLOW_TUPLE;
	__u16 pad;
};

/*
 * The compact key of an IPv4 flow's direction (roam_ct4, roam_nat4): the
 * addresses' last 4 bytes of struct ct_key, its ports and protocol; 16
 * bytes, hashed and compared in 18 ns where the 40 of struct ct_key take
 * 32 (issue 16). Programs keep working on struct ct_key; the map helpers
 * (conntrack.h ct_lookup and the others) choose the map by family.
 */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/*
 * Forward entry (roam_ct4, roam_conntrack): a flow pinned to its target, with its TCP
 * state. target and snat are set for a redirect; last_seen is the last
 * packet in this direction (the reply direction's is on the NAT entry).
 */
struct ct_value {
	__u8 target_addr[16];
	__u8 snat_addr[16];
	__be16 target_port;
	__be16 snat_port;
	enum target_kind kind;
	__u8 family;
	__u8 csum_set;	 /* 1: csum_addrs and csum_ports are set (0 in entries of older builds: computed per packet) */
	__u8 pad;
	__u32 state;	 /* CT_* bits, changed with atomic or/and (both directions write it) */
	__u32 frontend_id;
	__u32 fin_seq;	 /* the sequence number that acknowledges the client's FIN */
	__u16 csum_addrs; /* redirect: the rewrite's checksum change (one's complement, folded) of the addresses */
	__u16 csum_ports; /* and of the ports; constant for a flow, so computed once when it is pinned */
	__u32 seq_delta; /* CT_PROXY: the target's ISN less the cookie's, added to the client's acknowledgments (synproxy.h) */
	__u32 syn_seq;	 /* CT_PROXY: the client's ISN, for a SYN to the target sent again */
	__u16 syn_mss;	 /* CT_PROXY: the client's MSS, from its cookie */
	__u16 counter;	 /* redirect: its target's index in roam_target_counters (struct target.counter) */
	__u16 pad2[2];
	__u64 last_seen; /* bpf_ktime_get_coarse_ns: CLOCK_MONOTONIC, tick resolution */
};

/* Reverse entry (roam_nat4, roam_nat): where a redirected flow's replies go back to; its SNAT port's owner. */
struct nat_value {
	__u8 client_addr[16];
	__u8 front_addr[16];
	__be16 client_port;
	__be16 front_port;
	__u8 family;
	__u8 pad[3];
	__u32 flags; /* NAT_* bits */
	__u32 frontend_id;
	__u32 seq_delta;  /* NAT_PROXY: the target's ISN less the cookie's, taken from the target's sequence numbers */
	__u32 proxy_isn;  /* NAT_PROXY: the cookie, the ISN the client knows */
	__u16 proxy_win;  /* NAT_PROXY: the client's window, for the ACK to the target */
	__u16 counter;	  /* its target's index in roam_target_counters (struct target.counter) */
	__u32 pad3;
	__u64 last_seen; /* last reply */
};

/* Node configuration, written by Go at Open. Timeouts in ns, all set by Go. */
struct config {
	__u8 snat4[16]; /* the IPv4 SNAT pool's first address, IPv4-mapped; all zero when unset */
	__u8 snat6[16]; /* the IPv6 pool's first address */
	__u16 port_min; /* host order */
	__u16 port_max;
	__u8 has_snat4;
	__u8 has_snat6;
	__u8 synproxy; /* SYNPROXY_*: when XDP answers a redirected frontend's SYNs with SYN cookies (synproxy.h) */
	__u8 pad;
	__u32 snat4_count; /* the pool: snat4 and the next count-1 addresses (the last 32 bits counted up; nat.h) */
	__u32 snat6_count;
	__u64 tcp_syn_ns;	  /* embryonic: until the client acknowledges the target; the client's silence alone counts */
	__u64 tcp_syn_evict_ns;	  /* embryonic, client and target both silent this long: its port goes to a new flow that needs it */
	__u64 tcp_established_ns; /* established, and half-closed */
	__u64 tcp_close_ns;	  /* done, the target without TIME_WAIT (the client closed first, or RST) */
	__u64 tcp_time_wait_ns;	  /* done, the target in TIME_WAIT: its port is not given to another client before */
	__u64 udp_ns;		  /* UDP idle */
	__u64 udp_drain_ns;	  /* UDP idle after a commit moved the frontend away from the flow's target: done */
	__u64 synproxy_hold_ns;	  /* SYNPROXY_FLOOD: how long the proxy stays on after port pressure, or after cookies go unanswered */
};

/*
 * Per-CPU scratch for the rarer paths' large temporaries (a BPF stack has
 * 512 bytes). One packet at a time runs on a CPU; each field has one user.
 */
struct scratch {
	struct ct_value fv;	/* roam_new_flow: the new forward entry */
	struct nat_value rv;	/* roam_new_flow: the new NAT entry */
	struct ct_key rk;	/* roam_new_flow: its key */
	struct ct_key owner;	/* snat_alloc: the forward key of a port's holder */
	struct ct_key nk;	/* NAT key of a forward entry (ct_reply_seen, nat_mark_rst, nat_release) */
	struct ct_key fk;	/* forward key of a NAT entry (ct_on_reply) */
	struct ct_key ik;	/* roam_icmp: the key of the flow an ICMP error quotes */
	struct frontend_key svc; /* active_target */
	struct target t;	/* active_target's copy */
	__u32 id;		/* roam_new_flow: the frontend id of an SRv6 target in t */
	__u32 pad;
	struct {		/* synproxy.h: a SYN header for the cookie helper, and what a valid cookie told */
		__u8 th[24];	/* TCP header with an MSS option */
		__u32 isn;	/* the client's ISN */
		__u32 cookie;	/* our ISN: the cookie */
		__u16 mss;	/* the client's MSS, from the cookie */
		__u16 win;	/* the client's window */
		__u32 proxied;	/* set by synproxy_new for the roam_new_flow that follows: its flow is proxied */
	} sp;
	struct {		/* snat_alloc's probe over pool x port range (in scratch: its loop spills less) */
		__u32 h, first, min, range, slots, stride, full;
	} probe;
};

/* A redirect target, as its counters are named (roam_target_names, counters.h). */
struct target_key {
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* Per-CPU counters of one target: packets and bytes sent to it (redirected) and from it (its replies, translated back). */
struct target_counter {
	__u64 to_packets;
	__u64 to_bytes;
	__u64 from_packets;
	__u64 from_bytes;
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

/* ICMP and ICMPv6 share this header; rest is the next-hop MTU of a too-big (IPv4: its low 16 bits). */
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 rest;
};

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};
