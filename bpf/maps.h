/* maps.h: the BPF maps, pinned by name under the pin path and shared by the XDP and tc objects. */
#pragma once

#include "types.h"

/*
 * Frontends. BPF_F_NO_PREALLOC: an update links a new, fully written element in
 * place of the old one. The kernel frees the old one at once (bpf_mem_cache_free,
 * Linux 6.1+) and may hand its memory to the map's next update on that CPU; the
 * agent therefore waits for an RCU grace period after each write before the next
 * (dataplane.go servicesWrite), so a program copying from an element it looked
 * up never sees it rewritten under it. The programs copy the chosen target right
 * after the lookup.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend_key);
	__type(value, struct service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_services SEC(".maps");

/* Conntrack: one forward entry per flow (client -> frontend), LRU so a full table evicts the oldest flows. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_conntrack SEC(".maps");

/* NAT: one reverse entry per redirected flow (target -> SNAT address and port): the SNAT port's owner. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NAT_MAX_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct nat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_nat SEC(".maps");

/* Interfaces by ifindex: IFACE_* bits (dataplane AttachTC sets them; an interface not in it is a NIC). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_ifaces SEC(".maps");

static __always_inline int iface_is_pod(__u32 ifindex)
{
	__u32 *k = bpf_map_lookup_elem(&roam_ifaces, &ifindex);
	return k && (*k & IFACE_POD);
}

/* Node configuration: one element. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_config SEC(".maps");

/* Per-CPU counters indexed by frontend id * ACTION_MAX + action. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_FRONTENDS * ACTION_MAX);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_counters SEC(".maps");

/* Per-CPU drop and error counts indexed by enum drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} roam_drops SEC(".maps");

/* Per-CPU scratch (struct scratch): not pinned, each object has its own. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} roam_scratch SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&roam_scratch, &zero);
}
