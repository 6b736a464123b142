/* counters.h: per-CPU counter updates (no atomics: each CPU owns its slot): per frontend and action, per target, drop reasons. */
#pragma once

#include "maps.h"
#include "parse.h"

/*
 * Per-CPU packets and bytes per redirect target, both directions, at the
 * target's index: Go gives each redirect target (address, port, protocol)
 * an index when it stages it (struct target.counter), a new flow keeps it
 * in both its entries, and a packet is counted with one array lookup, no
 * hash of the target. roam_target_names says which target an index is (Go
 * writes it with the index, for a restarted agent); an index goes back to
 * Go's free list, its counters zeroed, once its target is in no slot and
 * no flow has held it for two GC sweeps (dataplane/targetcount.go).
 */
ROAM_MAP(roam_target_counters, BPF_MAP_TYPE_PERCPU_ARRAY, TARGET_COUNTERS_MAX, __u32, struct target_counter, 0);

ROAM_MAP(roam_target_names, BPF_MAP_TYPE_ARRAY, TARGET_COUNTERS_MAX, __u32, struct target_key, 0);

/*
 * count_row adds a packet of bytes to frontend id's column col in a per-CPU
 * array of struct counter laid out id * cols + col (roam_counters,
 * roam_srv6_stats); an id or column out of range counts nowhere.
 */
static __always_inline void count_row(void *map, __u32 id, __u32 col, __u32 cols, __u64 bytes)
{
	if (id >= MAX_FRONTENDS || col >= cols)
		return;
	__u32 idx = id * cols + col;
	struct counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_action(__u32 id, __u32 action, __u64 bytes)
{
	if (!(ROAM_ABLATE & ABLATE_COUNTERS))
		count_row(&roam_counters, id, action, ACTION_MAX, bytes);
}

static __always_inline void count_reason(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&roam_drops, &reason);
	if (c)
		(*c)++;
}

/*
 * count_target counts a packet about to go out to a redirect target (x:
 * a redirect) or coming from one (a reply, about to be translated back)
 * under that target's index (x->counter, from the flow's entry). An ICMP
 * error is counted under the target of the flow it is about when it goes
 * to that target; one about it from elsewhere is not the target's.
 */
static __always_inline void count_target(const struct pkt *p, const struct xlate *x)
{
	if (ROAM_ABLATE & (ABLATE_COUNTERS | ABLATE_TARGET_COUNTERS))
		return;
	__u32 idx = x->counter;
	if (!idx)
		return;
	int to = x->action == ACTION_REDIRECT;
	if (!to && (x->action != ACTION_REVERSE || p->proto == IPPROTO_ICMP_ || p->proto == IPPROTO_ICMPV6_))
		return;
	struct target_counter *c = bpf_map_lookup_elem(&roam_target_counters, &idx);
	if (!c)
		return;
	if (to) {
		c->to_packets++;
		c->to_bytes += p->len;
	} else {
		c->from_packets++;
		c->from_bytes += p->len;
	}
}

/*
 * XDP redirect errors. A redirect fails after the program has returned
 * (an egress that cannot take XDP frames: a veth whose peer runs neither
 * XDP nor GRO, a device gone or down), where no verdict can say it: the
 * tracepoint xdp:xdp_redirect_err reports it, for every XDP program of
 * the machine. roam_redirect_err (xdp.c) counts those of this object's
 * XDP program (its id in roam_self, written by Go at load) as
 * redirect_failed. Only the kernel fields read are declared, relocated at
 * load (CO-RE).
 */
struct bpf_prog_aux {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_prog {
	struct bpf_prog_aux *aux;
} __attribute__((preserve_access_index));

/* This object's XDP program id (dataplane Open writes it). Not pinned. */
ROAM_LOCAL_MAP(roam_self, BPF_MAP_TYPE_ARRAY, 1, __u32, __u32, 0);

/* count_redirect_err counts a failed redirect of the XDP program prog. */
static __always_inline void count_redirect_err(const struct bpf_prog *prog)
{
	__u32 zero = 0;
	__u32 *self = bpf_map_lookup_elem(&roam_self, &zero);
	if (self && *self && prog->aux->id == *self)
		count_reason(REASON_REDIRECT_FAILED);
}

/*
 * tc redirect errors. bpf_redirect, bpf_redirect_neigh and
 * bpf_redirect_peer only record where to; the kernel carries the redirect
 * out after the program returned (skb_do_redirect), where a failure (the
 * device gone, a pod's end down or not in another namespace, a packet it
 * cannot send) is no verdict's and no tracepoint's but skb:kfree_skb's.
 * roam_tc marks its CPU with the packet it redirects (this object's
 * roam_tc_redirecting: the skb's address; any other verdict clears it);
 * roam_tc_redirect_drop, on skb:kfree_skb, counts as redirect_failed the
 * free of that very packet from the kernel's redirect code
 * (roam_tc_redirect_text: skb_do_redirect and __bpf_redirect, as
 * /proc/kallsyms places them; Go writes it at Open). fexit of
 * skb_do_redirect would see its return value, but a kernel locked down
 * (integrity) refuses fexit programs. A drop further down, in the
 * device's queue (dev_queue_xmit: a device down), is the device's
 * statistics', not counted here.
 */
ROAM_LOCAL_MAP(roam_tc_redirecting, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, __u64, 0);

#define TC_REDIRECT_TEXT 4

/* Ranges of kernel text, [start, end) each (unused: 0, 0). */
struct text_ranges {
	struct {
		__u64 start;
		__u64 end;
	} r[TC_REDIRECT_TEXT];
};

ROAM_LOCAL_MAP(roam_tc_redirect_text, BPF_MAP_TYPE_ARRAY, 1, __u32, struct text_ranges, 0);

/* tc_redirecting marks the CPU with skb if verdict is a redirect (else clears it), and returns verdict. */
static __always_inline int tc_redirecting(struct __sk_buff *skb, int verdict)
{
	__u32 zero = 0;
	__u64 *m = bpf_map_lookup_elem(&roam_tc_redirecting, &zero);
	if (m)
		*m = verdict == TC_ACT_REDIRECT ? (__u64)(long)skb : 0;
	return verdict;
}

/* count_tc_redirect_drop: skb is freed from the kernel text at loc; counted if it is the packet roam redirected and loc the redirect's code. */
static __always_inline void count_tc_redirect_drop(__u64 skb, __u64 loc)
{
	__u32 zero = 0;
	__u64 *m = bpf_map_lookup_elem(&roam_tc_redirecting, &zero);
	if (!m || *m != skb || !skb)
		return;
	struct text_ranges *t = bpf_map_lookup_elem(&roam_tc_redirect_text, &zero);
	if (!t)
		return;
#pragma unroll
	for (int i = 0; i < TC_REDIRECT_TEXT; i++) {
		if (loc >= t->r[i].start && loc < t->r[i].end) {
			*m = 0;
			count_reason(REASON_REDIRECT_FAILED);
			return;
		}
	}
}
