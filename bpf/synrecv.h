/*
 * synrecv.h: a target's stale SYN_RECV: answered with an RST (XDP). A SYN
 * flood's flow, evicted from its SNAT port (nat.h), can leave the target
 * holding a request socket for that port; a real client's SYN given the
 * port then meets it, and the target answers with a bare ACK for the old
 * flow. Forwarded, that ACK makes the client reset the flow and start
 * again on another port (which may hold another): seconds. Instead, the
 * XDP program turns the ACK into the RST that clears the request socket
 * (its sequence number is the ACK's acknowledgment number, so the target
 * takes it) and sends it back to the target; the client's SYN
 * retransmission then finds the port clean.
 */

#include "csum.h"
#include "counters.h"
#include "synproxy.h"

#ifndef SYNRECV_H
#define SYNRECV_H

/*
 * xdp_stale_reset turns the target's TCP packet into an RST from its
 * destination back to its source, with sequence number its
 * acknowledgment number, no options or payload (xdp_tcp_rebuild,
 * synproxy.h), and returns XDP_TX.
 */
static __always_inline int xdp_stale_reset(struct xdp_md *ctx)
{
	struct xdp_tcp h;
	if (xdp_tcp_find(ctx, &h))
		return XDP_DROP;
	return xdp_tcp_rebuild(ctx, REBUILD_SWAP | TCP_FLAG_RST, bpf_ntohl(h.th->ack_seq), 0, 0);
}

/*
 * stale_synrecv: p is a target's reply matching nv, a TCP flow whose
 * target has not sent its SYN-ACK yet (NAT_SYN_WAIT). A SYN-ACK ends the
 * wait; an RST passes; anything else (a bare ACK) comes from a request
 * socket of an older flow on the port: 1, answer it (ROAM_STALE_RESET).
 */
static __always_inline int stale_synrecv(struct nat_value *nv, const struct pkt *p)
{
	if (p->tcp_flags & TCP_FLAG_SYN) {
		__sync_fetch_and_and(&nv->flags, ~NAT_SYN_WAIT);
		return 0;
	}
	return !(p->tcp_flags & TCP_FLAG_RST);
}

#endif /* SYNRECV_H */

/* Each program's own: roam.c compiles this part once for XDP, once for tc. */
#ifndef SYNRECV_PROG_H
#define SYNRECV_PROG_H

#ifdef ROAM_XDP
#define ROAM_STALE_ANSWERED 1
#define ROAM_STALE_RESET(ctx) xdp_stale_reset(ctx)
#else
#define ROAM_STALE_ANSWERED 0 /* tc: forwarded as any reply; the client resets the flow */
#define ROAM_STALE_RESET(ctx) VERDICT_DROP
#endif

#endif /* SYNRECV_PROG_H */
