/* csum.h: one's-complement checksum arithmetic for incremental IP and L4 header updates (RFC 1624). */
#pragma once

#include "types.h"

/* csum_fold_neg folds a 64-bit one's-complement sum to 16 bits and negates it. */
static __always_inline __u16 csum_fold_neg(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~(__u16)sum;
}

/*
 * csum_update returns the checksum field after the covered data changed by
 * diff (a bpf_csum_diff result: sum of ~old words and new words).
 */
static __always_inline __u16 csum_update(__u16 old, __u32 diff)
{
	return csum_fold_neg((__u64)(__u16)~old + (__u64)diff);
}

/* csum_update_l4 updates a TCP/UDP checksum in place, honouring the IPv4 UDP "no checksum" zero. */
static __always_inline void csum_update_l4(__sum16 *check, __u8 proto, __u8 family, __u32 diff)
{
	if (proto == IPPROTO_UDP_ && family == FAMILY_V4 && *check == 0)
		return;
	__u16 c = csum_update(*check, diff);
	if (proto == IPPROTO_UDP_ && c == 0)
		c = 0xffff;
	*check = c;
}

/* csum_add32 adds two 32-bit partial sums with end-around carry. */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
	__u32 s = a + b;
	return s + (s < a);
}

/* csum_fold16 folds a one's-complement partial sum to 16 bits (not negated). */
static __always_inline __u16 csum_fold16(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * csum_diff16 is bpf_csum_diff without the helper call: the one's-complement
 * sum of the negated old and the new 16-bit words (n is a constant).
 */
static __always_inline __u32 csum_diff16(const __u16 *old, const __u16 *new, int n)
{
	__u32 s = 0;
#pragma unroll
	for (int i = 0; i < n; i++)
		s += (__u16)~old[i] + (__u32) new[i];
	return s;
}
