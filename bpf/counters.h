/* counters.h: per-CPU counter updates (no atomics: each CPU owns its slot). */
#pragma once

#include "maps.h"

static __always_inline void count_action(__u32 id, __u32 action, __u64 bytes)
{
	if ((ROAM_ABLATE & ABLATE_COUNTERS) || id >= MAX_FRONTENDS || action >= ACTION_MAX)
		return;
	__u32 idx = id * ACTION_MAX + action;
	struct counter *c = bpf_map_lookup_elem(&roam_counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_reason(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&roam_drops, &reason);
	if (c)
		(*c)++;
}
