/* consts.h: tunable limits, enum values and protocol numbers; each tunable can be overridden with -D. */
#pragma once

#ifndef MAX_FRONTENDS
#define MAX_FRONTENDS 4096 /* frontend ids are 1..MAX_FRONTENDS-1 */
#endif

#ifndef CT_MAX_ENTRIES
#define CT_MAX_ENTRIES 262144 /* conntrack: one forward entry per flow (client -> frontend) */
#endif

#ifndef NAT_MAX_ENTRIES
#define NAT_MAX_ENTRIES 262144 /* NAT: one reverse entry per redirected flow (target -> SNAT address and port) */
#endif

/*
 * ROAM_ABLATE switches stages of the XDP program off at build time, for
 * profiling only (make bench-dataplane BENCH_DATAPLANE_FLAGS=-ablate builds
 * and measures each): what a build without a stage saves is what the stage
 * costs. Every real build has 0; a build with any bit set forwards wrongly.
 */
#ifndef ROAM_ABLATE
#define ROAM_ABLATE 0
#endif
#define ABLATE_FIB 0x01	     /* no next-hop lookup: XDP_TX with the MAC addresses as they came */
#define ABLATE_NH_CACHE 0x02 /* bpf_fib_lookup on every packet: no per-CPU next-hop cache */
#define ABLATE_COUNTERS 0x04 /* no per-frontend packet and byte counters */
#define ABLATE_CSUM 0x08     /* no checksum arithmetic (addresses and ports still rewritten) */
#define ABLATE_CLOCK 0x10    /* no clock read on the pinned path (flows never idle) */
#define ABLATE_SRV6 0x20     /* no look for SRv6 packets to this node's SID before the NAT path */
#define ABLATE_TARGET_COUNTERS 0x40 /* no per-target counters (the per-frontend ones kept) */

/*
 * ROAM_TEST_READ_DELAY, tests only: active_target spins this many bpf_loop
 * rounds between reading a frontend's active index and copying its target, so
 * a test can hold readers in that window while the agent writes (the
 * commit stress test, dataplane/commit_stress_test.go). Every real build
 * has 0.
 */
#ifndef ROAM_TEST_READ_DELAY
#define ROAM_TEST_READ_DELAY 0
#endif

#ifndef MAX_IFACES
#define MAX_IFACES 4096 /* interfaces roam_ifaces can describe */
#endif

/* Interface kinds (roam_ifaces values), set by Go at attach. */
#define IFACE_POD 0x01 /* a local pod's veth (tc only): XDP cannot send into it unless its peer runs XDP or GRO */

#ifndef SNAT_POOL_MAX
#define SNAT_POOL_MAX 1024 /* SNAT addresses per family (pool x port range slots fit in 32 bits) */
#endif

#ifndef TARGET_COUNTERS_MAX
#define TARGET_COUNTERS_MAX 16384 /* redirect targets with counters at once (index 0 is none) */
#endif

#ifndef ICMP_RATE
#define ICMP_RATE 1000 /* time exceeded answers a second per CPU, on average (icmp.h icmp_allow) */
#endif

#ifndef ICMP_BURST
#define ICMP_BURST 50 /* and in a burst */
#endif

#ifndef SNAT_CURSORS
#define SNAT_CURSORS 1024 /* SNAT port cursors (RFC 6056 algorithm 4's table); a power of two */
#endif
#ifndef PORT_RETRIES
#define PORT_RETRIES 16 /* SNAT port picks tried before counting exhaustion */
#endif

/*
 * Target kinds: the same numbers as lb.TargetKind (dataplane/lb) in Go. One
 * byte (struct target.kind, struct ct_value.kind), so the enum is in the
 * object's BTF, where dataplane's TestTargetKindsMatchBPF holds Go to it.
 */
enum target_kind : __u8 {
	TARGET_NONE = 0,
	TARGET_LOCAL = 1,
	TARGET_REDIRECT = 2,
	TARGET_SRV6 = 3, /* encapsulate in IPv6 + SRH along the slot's segment list (srv6.h) */
};

/* Per-frontend actions counted in the counters map. */
enum action {
	ACTION_PASS = 0,
	ACTION_REDIRECT = 1,
	ACTION_REVERSE = 2,
	ACTION_DROP = 3,
	ACTION_MAX = 4,
};
/* Reasons counted in the drops map: packets dropped, or passed untouched because they could not be handled. */
enum drop_reason {
	REASON_NO_ROUTE = 0,	   /* fib lookup found no route: dropped */
	REASON_CT_FULL = 1,	   /* conntrack full, a new flow's insert failed: dropped (a local flow: passed unpinned) */
	REASON_PORT_EXHAUSTED = 2, /* no free SNAT port: dropped */
	REASON_MALFORMED = 3,	   /* truncated or inconsistent headers: passed untouched */
	REASON_FRAGMENT = 4,	   /* IPv4 or IPv6 fragment: passed untouched; dropped if its flow goes away from this host (a first fragment: balancer.h away_from_host) */
	REASON_IP_OPTIONS = 5,	   /* IPv4 with options: passed untouched; dropped if its flow goes away from this host */
	REASON_IPV6_EXT = 6,	   /* IPv6 with extension headers: passed untouched; dropped if its flow goes away from this host */
	REASON_NO_NEIGH = 7,	   /* no neighbour: XDP passes the packet untouched to tc, which sends it by bpf_redirect_neigh (each counts) */
	REASON_NO_SNAT = 8,	   /* no SNAT address for the target's family: dropped */
	REASON_NO_CONFIG = 9,	   /* config map empty: passed untouched */
	REASON_FAMILY_MISMATCH = 10, /* frontend and target of different families: dropped */
	REASON_NO_FLOW = 11,	   /* TCP without SYN, no flow and no local socket: dropped */
	REASON_TOO_BIG = 12,	   /* larger than the egress MTU: dropped; XDP answers with an ICMP too-big */
	REASON_TO_POD = 13,	   /* for a local pod's veth: XDP passes it untouched to tc, which sends it to the pod (bpf_redirect_peer) */
	REASON_SRV6_FOREIGN_SID = 14, /* SRv6: a segment outside roam's locators: dropped */
	REASON_SRV6_FOREIGN_SRC = 15, /* SRv6: to our SID from outside roam's locators: dropped */
	REASON_SRV6_NO_COPY = 16,     /* SRv6: last segment here, no copy and no frontend of ours: dropped */
	REASON_SRV6_TOO_BIG = 17,     /* SRv6: encapsulated packet over the path MTU: dropped */
	REASON_SRV6_BAD_SRH = 18,     /* SRv6: to our SID with an SRH we do not handle (TLVs, >2 segments, bad inner): dropped */
	REASON_SRV6_NO_ENCAP = 19,    /* SRv6: tc could not open room for the encapsulation (bpf_skb_adjust_room): dropped */
	REASON_TTL_EXCEEDED = 20,     /* to be forwarded with a TTL or hop limit of 1 or 0: dropped */
	REASON_SYN_EVICTED = 21,      /* an embryonic flow silent for tcp_syn_evict_ns gave its SNAT port to a new flow: dropped (nat.h) */
	REASON_ICMP_LIMITED = 22,     /* a time exceeded (its packet counts as ttl_exceeded too) or a relayed packet too big (srv6.h) not sent: over the ICMP budget (icmp.h icmp_allow) */
	REASON_NAT_FULL = 23,	      /* NAT map full, no finished flow's port to take over: dropped (nat.h) */
	REASON_REDIRECT_FAILED = 24,  /* the kernel could not carry out a redirect after the program returned (counters.h: XDP roam_redirect_err, tc roam_tc_redirect_drop): dropped */
	REASON_SYN_RECV_STALE = 25,   /* XDP: a target's answer from a request socket of an older flow on the port: turned into an RST to the target (synrecv.h) */
	REASON_SYNPROXY_COOKIE_SENT = 26, /* XDP: a SYN to a redirected frontend answered with a SYN cookie (synproxy.h), not forwarded */
	REASON_SYNPROXY_COOKIE_OK = 27,	  /* XDP: an ACK with a valid cookie: its flow starts, the ACK becomes the SYN to the target */
	REASON_SYNPROXY_COOKIE_BAD = 28,  /* XDP: an ACK of no flow, with no valid cookie: dropped */
	REASON_SYNPROXY_FLOWS = 29,	  /* XDP: a proxied flow's target answered: its SYN-ACK became the ACK back to it */
	REASON_SYNPROXY_EARLY = 30,	  /* a client's packet before its target's SYN-ACK: sent on as the SYN again (XDP, its data dropped; tc: dropped) */
	REASON_SRV6_PTB_RELAYED = 31,	  /* XDP: an underlay ICMPv6 packet too big about our SRv6 encapsulation, relayed to the client as its family's too-big less the encapsulation (srv6.h) */
	REASON_SRV6_PTB_REFUSED = 32,	  /* XDP: a packet too big to our SID quoting a frontend's packet that no path of the frontend's would carry (a NAT target, other segments or outer destination), or reporting under 1280: not relayed (srv6.h) */
	REASON_MAX = 33,
};

/*
 * TCP state of a flow, kept on its forward entry (struct ct_value.state).
 * A reply's flags reach it through the NAT entry. A flow is done after both
 * FINs (a local flow: after the client's, its replies bypass the programs),
 * or after an RST that no later non-RST packet has contradicted.
 */
#define CT_SEEN_REPLY 0x01	   /* the target answered (SYN-ACK) */
#define CT_ESTABLISHED 0x02	   /* the client acknowledged the target: handshake complete */
#define CT_FIN_FWD 0x04		   /* the client sent FIN */
#define CT_FIN_REV 0x08		   /* the target sent FIN */
#define CT_RST 0x10		   /* an RST, not contradicted since */
#define CT_TARGET_TIME_WAIT 0x20 /* the target closed first (or simultaneously): it holds TIME_WAIT */
#define CT_PROXY 0x40		   /* started by the SYN proxy: sequence numbers translated (synproxy.h) */
#define CT_PROXY_WAIT 0x80	   /* proxied, the target's SYN-ACK not seen yet */
/* NAT entry flags (struct nat_value.flags). */
#define NAT_RST 0x01 /* the flow's forward entry holds CT_RST: a reply must reach it to contradict it */
#define NAT_SYN_WAIT 0x02 /* TCP, until the target's SYN-ACK: a reply without SYN before it is a stale request socket's (synrecv.h) */
#define NAT_PROXY 0x04 /* started by the SYN proxy (synproxy.h) */

/* config.synproxy: when XDP answers SYNs to a redirected frontend itself, with SYN cookies (synproxy.h). */
#define SYNPROXY_OFF 0
#define SYNPROXY_ALWAYS 1
#define SYNPROXY_FLOOD 2 /* for config.synproxy_hold_ns after SNAT ports came under pressure (an embryonic flow evicted, or none free), or cookies went unanswered */

#ifndef SYNPROXY_UNANSWERED
#define SYNPROXY_UNANSWERED 64 /* SYNPROXY_FLOOD stays on while more cookies than this a second, and more than half, go unanswered */
#endif

#define FAMILY_V4 4
#define FAMILY_V6 6
#define ETH_ALEN_ 6
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define E2BIG_ 7 /* a map update's error when the map is full (-E2BIG) */
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF
#define AF_INET_ 2
#define AF_INET6_ 10
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
