/* maps.h: the BPF maps, pinned by name under the pin path and shared by the XDP and tc programs of the one object (roam.c). */
#pragma once

#include "types.h"

/*
 * A map definition in libbpf's BTF form, one line each:
 * ROAM_MAP(name, type, max_entries, key, value, map_flags) is pinned by
 * name under the pin path (state that outlives a program: dataplane opens
 * and checks it there); ROAM_LOCAL_MAP is not pinned (a program's scratch
 * or cache, or what Open writes afresh). Written out, each is the usual
 * struct { __uint(type, ...); ... } name SEC(".maps"). A map whose value
 * bpf2go cannot write as Go gives its sizes instead (roam_srv6_ptb_scratch).
 */
#define ROAM_MAP_FIELDS(_type, _max, _key, _value, _flags)                     \
	__uint(type, _type);                                                   \
	__uint(max_entries, _max);                                             \
	__uint(map_flags, _flags);                                             \
	__type(key, _key);                                                     \
	__type(value, _value)
#define ROAM_MAP(_name, _type, _max, _key, _value, _flags)                     \
	struct {                                                               \
		ROAM_MAP_FIELDS(_type, _max, _key, _value, _flags);            \
		__uint(pinning, LIBBPF_PIN_BY_NAME);                           \
	} _name SEC(".maps")
#define ROAM_LOCAL_MAP(_name, _type, _max, _key, _value, _flags)               \
	struct {                                                               \
		ROAM_MAP_FIELDS(_type, _max, _key, _value, _flags);            \
	} _name SEC(".maps")

/*
 * Frontends, in two maps, so that no element a program reads is ever freed or
 * reused on the path of a migration (no RCU grace period to wait for there).
 *
 * roam_services: frontend -> its id (1..MAX_FRONTENDS-1). Written only when a
 * frontend is added or removed. A hash element can be reused as soon as it is
 * deleted (bpf_mem_cache_free, Linux 6.1+), so the agent waits for an RCU grace
 * period after a delete before the next insert and before reusing the id
 * (dataplane.go, freeGrace).
 *
 * roam_service_slots: the frontend's record, indexed by its id: two target
 * slots and the active index. An array element is never freed. The agent maps
 * the array (BPF_F_MMAPABLE) and writes a target into the inactive slot with
 * plain stores (Stage), then makes it active with one aligned store-release of
 * `active` (Commit). A program reads `active` once and copies the slot it
 * names; the slot's address depends on the value read, so the copy sees the
 * slot as it was written before the store that published it. The agent never
 * writes a slot that was active less than an RCU grace period ago (the commit
 * that flipped away from it starts one; Stage waits for it only when it comes
 * that soon), so a program that read the old index copies an unchanged slot.
 */
ROAM_MAP(roam_services, BPF_MAP_TYPE_HASH, MAX_FRONTENDS, struct frontend_key, __u32, BPF_F_NO_PREALLOC);

ROAM_MAP(roam_service_slots, BPF_MAP_TYPE_ARRAY, MAX_FRONTENDS, __u32, struct service, BPF_F_MMAPABLE);

/*
 * Conntrack and NAT: plain hash maps. Nothing is evicted: a full table
 * refuses new flows (counted: ct_full, nat_full) and keeps every flow it
 * holds; the agent's garbage collection (dataplane/gc.go) removes flows
 * that are over, both directions together, and a new flow takes over a
 * finished flow's SNAT port itself (nat.h). An LRU evicted per CPU in
 * batches before the table was full, live flows included, one direction
 * without the other, and a busy local service's flows pushed redirected
 * ones out.
 *
 * Not preallocated here, for tests and small tables; roam-agent
 * preallocates them (dataplane.Config.PreallocFlows clears the flag at
 * load): bench-dataplane, four A/B runs with both interleaved in each,
 * measured new flows in three of them, 1.5-2.4x as fast preallocated in
 * each of those three; established flows mostly faster and 1M flows
 * mixed (its README).
 * The earlier case for not preallocating (issue 16): a preallocated table is one area of 4 KiB
 * pages as large as the table (~185 MB for 1.1M flows), and once flows have
 * come and gone the live ones sit anywhere in it, so even a few flows cost
 * a TLB miss and a cache miss each per packet; elements from the kernel's
 * allocator sit in its directly mapped memory (large pages), close to the
 * flows freed last. bench-dataplane, same load: few flows after churn
 * ~1.6-2x the rate, 1M flows ~1.2x; a new flow costs ~15% more (an
 * allocation). An insert can then also fail for want of memory: refused
 * as a full table's is (ct_full; the NAT port probe: port_exhausted).
 *
 * A deleted element is reused at once (bpf_mem_cache_free: the next
 * insert on the deleting CPU may take it; so it was preallocated), so a
 * program holding a pointer to it may see another flow written there.
 * Deletions of a flow that may still have packets in flight on another
 * CPU are the programs' own, and were so with the LRU (whose evictions reused elements the same way); GC deletes only
 * flows idle in both directions for their state's timeout (seconds), read
 * again just before the delete: a packet would have to arrive in those
 * microseconds after seconds of silence, and its program be overtaken by
 * an insert on the deleting CPU between its lookup and its copy, to act on
 * another flow's entry, and then only for that packet. Each entry's
 * liveness rule is the same in the programs and GC (conntrack.h).
 */

/*
 * Each in two maps: IPv4 flows under the 16-byte struct ct4_key (roam_ct4,
 * roam_nat4), IPv6 flows under struct ct_key (roam_conntrack, roam_nat,
 * the names and layout of the maps that held both families before: an
 * agent upgraded over them keeps its IPv6 flows in place, and moves the
 * IPv4 ones, dataplane/ct4.go). Capacity is per family (MaxFlows each).
 * Programs go through conntrack.h's ct_lookup, ct_update, ct_delete and
 * nat_* helpers, which choose by family.
 */

/* Conntrack: one forward entry per flow (client -> frontend). */
ROAM_MAP(roam_ct4, BPF_MAP_TYPE_HASH, CT_MAX_ENTRIES, struct ct4_key, struct ct_value, BPF_F_NO_PREALLOC);

/* Conntrack: one forward entry per IPv6 flow (client -> frontend). */
ROAM_MAP(roam_conntrack, BPF_MAP_TYPE_HASH, CT_MAX_ENTRIES, struct ct_key, struct ct_value, BPF_F_NO_PREALLOC);

/* NAT: one reverse entry per redirected flow (target -> SNAT address and port): the SNAT port's owner. */
ROAM_MAP(roam_nat4, BPF_MAP_TYPE_HASH, NAT_MAX_ENTRIES, struct ct4_key, struct nat_value, BPF_F_NO_PREALLOC);

/* The same for IPv6 flows. */
ROAM_MAP(roam_nat, BPF_MAP_TYPE_HASH, NAT_MAX_ENTRIES, struct ct_key, struct nat_value, BPF_F_NO_PREALLOC);

/* SNAT port cursors (nat.h snat_cursor): per target hash, the counter of RFC 6056 algorithm 4. */
ROAM_MAP(roam_snat_cursor, BPF_MAP_TYPE_ARRAY, SNAT_CURSORS, __u32, __u32, 0);

/* Interfaces by ifindex: IFACE_* bits (dataplane AttachTC sets them; an interface not in it is a NIC). */
ROAM_MAP(roam_ifaces, BPF_MAP_TYPE_HASH, MAX_IFACES, __u32, __u32, 0);

static __always_inline int iface_is_pod(__u32 ifindex)
{
	__u32 *k = bpf_map_lookup_elem(&roam_ifaces, &ifindex);
	return k && (*k & IFACE_POD);
}

/* Node configuration: one element. */
ROAM_MAP(roam_config, BPF_MAP_TYPE_ARRAY, 1, __u32, struct config, 0);

/* Per-CPU counters indexed by frontend id * ACTION_MAX + action. */
ROAM_MAP(roam_counters, BPF_MAP_TYPE_PERCPU_ARRAY, MAX_FRONTENDS * ACTION_MAX, __u32, struct counter, 0);

/* Per-CPU drop and error counts indexed by enum drop_reason. */
ROAM_MAP(roam_drops, BPF_MAP_TYPE_PERCPU_ARRAY, REASON_MAX, __u32, __u64, 0);

/*
 * Per-CPU scratch (struct scratch): not pinned. Both programs use it: on a
 * CPU, one runs at a time (XDP and tc ingress in the softirq, one after the
 * other; tc egress with softirqs off), and neither calls a helper that runs
 * the other.
 */
ROAM_LOCAL_MAP(roam_scratch, BPF_MAP_TYPE_PERCPU_ARRAY, 1, __u32, struct scratch, 0);

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&roam_scratch, &zero);
}
