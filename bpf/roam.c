/*
 * roam.c: the data plane's one BPF object: the XDP program (xdp.c: packets
 * arriving at a node), the tc program (tc.c: packets local pods or the
 * host send), their tracepoint programs, and the maps they share. dataplane
 * loads it as one collection; bpf2go writes its Go once.
 *
 * The per-packet pipeline (balancer.h and the headers under it) is written
 * once over the attach point's context (ROAM_CTX, VERDICT_PASS, ...:
 * balancer.h), so this file compiles it twice: with xdp.c's definitions,
 * then with tc.c's. A header's code is either shared (types, maps, and
 * code that does not depend on the attach point; compiled in the first
 * pass, under the header's guard FOO_H) or each program's own (under
 * FOO_PROG_H, which is cleared below between the passes). The tc pass's
 * own functions get a _tc suffix below: a function added to a FOO_PROG_H
 * part needs its line there ("redefinition of ..." says which).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* A program's entry in a map where each program has its own (roam_icmp_state). */
#define ROAM_PROG_XDP 0
#define ROAM_PROG_TC 1

#include "xdp.c"

/* Between the passes: xdp.c's attach point and the per-program parts go. */
#undef ROAM_XDP
#undef ROAM_PROG
#undef ROAM_CTX
#undef VERDICT_PASS
#undef VERDICT_DROP
#undef ROAM_OWN_SOCKET
#undef ROAM_WIRE_LEN
#undef ROAM_SYNPROXY
#undef ROAM_STALE_ANSWERED
#undef ROAM_STALE_RESET
#undef ROAM_ICMP_ERROR
#undef NAT_PROG_H
#undef SYNPROXY_PROG_H
#undef SYNRECV_PROG_H
#undef ICMP_PROG_H
#undef SRV6_PROG_H
#undef BALANCER_PROG_H

/* tc.c's own functions and those of the FOO_PROG_H parts (a call or definition only, not a struct of the same name). */
#define roam_l4_csum(...) roam_l4_csum_tc(__VA_ARGS__)
#define roam_xmit(...) roam_xmit_tc(__VA_ARGS__)
#define roam_srv6_out(...) roam_srv6_out_tc(__VA_ARGS__)
#define rewrite(...) rewrite_tc(__VA_ARGS__)
#define synproxy_forward(...) synproxy_forward_tc(__VA_ARGS__)
#define synproxy_reply(...) synproxy_reply_tc(__VA_ARGS__)
#define roam_icmp(...) roam_icmp_tc(__VA_ARGS__)
#define icmp_rewrite(...) icmp_rewrite_tc(__VA_ARGS__)
#define mss_clamp(...) mss_clamp_tc(__VA_ARGS__)
#define icmp_state(...) icmp_state_tc(__VA_ARGS__)
#define ip_ttl_expiring(...) ip_ttl_expiring_tc(__VA_ARGS__)
#define icmp_allow(...) icmp_allow_tc(__VA_ARGS__)
#define icmp_too_big(...) icmp_too_big_tc(__VA_ARGS__)
#define icmp_time_exceeded(...) icmp_time_exceeded_tc(__VA_ARGS__)
#define ttl_hop(...) ttl_hop_tc(__VA_ARGS__)
#define fib_too_big(...) fib_too_big_tc(__VA_ARGS__)
#define xlate_apply(...) xlate_apply_tc(__VA_ARGS__)
#define xlate_forward(...) xlate_forward_tc(__VA_ARGS__)
#define roam_local_socket(...) roam_local_socket_tc(__VA_ARGS__)
#define roam_new_flow(...) roam_new_flow_tc(__VA_ARGS__)
#define roam_process(...) roam_process_tc(__VA_ARGS__)

#include "tc.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
