/* xdp.c: the XDP entry for packets arriving at a node: NAT to the target, replies back, SRv6 paths, out by XDP_TX or redirect (part of roam.c). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROAM_XDP 1
#define ROAM_PROG ROAM_PROG_XDP
#define ROAM_CTX struct xdp_md
#define VERDICT_PASS XDP_PASS
#define VERDICT_DROP XDP_DROP
#define ROAM_OWN_SOCKET(ctx) 0 /* arriving packets have no socket yet */
#define ROAM_WIRE_LEN(ctx) ((__u32)((ctx)->data_end - (ctx)->data))

#include "parse.h"
#include "csum.h"
#include "counters.h"
#include "fib.h"
#include "nexthop.h"

/* roam_l4_csum: XDP sees whole packets with full checksums, so update the L4 checksum arithmetically. */
static __always_inline int roam_l4_csum(struct xdp_md *ctx, struct pkt *p, __u32 l4, __u32 diff_l3, __u32 diff_ports)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 diff = csum_add32(diff_l3, diff_ports);
	if (p->proto == IPPROTO_TCP_) {
		struct tcp_hdr *th = data + l4;
		if ((void *)(th + 1) > data_end)
			return -1;
		csum_update_l4(&th->check, p->proto, p->family, diff);
	} else {
		struct udp_hdr *uh = data + l4;
		if ((void *)(uh + 1) > data_end)
			return -1;
		csum_update_l4(&uh->check, p->proto, p->family, diff);
	}
	return 0;
}

#include "icmp.h"

/*
 * roam_xmit sends the packet as x says: next hop by bpf_fib_lookup through
 * the per-CPU next-hop cache, before the rewrite; XDP_TX on the same
 * interface, redirect to another; too big for the egress: an ICMP too-big
 * back to its sender; its TTL or hop limit out: an ICMP time exceeded; no
 * neighbour, or for a local pod: up to tc, untouched.
 */
static __always_inline int roam_xmit(struct xdp_md *ctx, struct pkt *p, const struct xlate *x, __u64 now)
{
	if (ROAM_ABLATE & ABLATE_FIB) {
		xlate_apply(ctx, p, x);
		count_action(x->id, x->action, p->len);
		return XDP_TX;
	}
	__u32 in = ctx->ingress_ifindex, out = 0, mtu = 0, pod = 0;
	if (ip_ttl_expiring(ctx, p->family))
		icmp_keep_macs(ctx); /* nh_lookup writes the next hop's: a time exceeded goes back */
	long rc = nh_lookup(ctx, p, x, in, now, &out, &mtu, &pod);
	if (rc < 0)
		return XDP_DROP; /* shorter than parsed: cannot happen */
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return fib_too_big(ctx, p, x, mtu);
	if (fib_no_route(rc, p, x))
		return VERDICT_DROP;
	if (pod) {
		/*
		 * A local pod's veth drops a frame redirected into it unless its
		 * peer runs XDP or GRO: up to tc as it came, which translates it
		 * and hands it to the pod with bpf_redirect_peer.
		 */
		count_reason(REASON_TO_POD);
		return XDP_PASS;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/*
		 * The packet goes up as it came: the tc program on this
		 * interface's ingress translates it again (its flow is pinned
		 * now) and sends it with bpf_redirect_neigh, which resolves the
		 * neighbour (and keeps it in use). Rewritten here, the kernel
		 * would drop it (its source is this host's) and never resolve.
		 */
		count_reason(REASON_NO_NEIGH);
		return XDP_PASS;
	}
	/* Forwarded from here (BPF_FIB_LKUP_RET_SUCCESS): a hop, as a router counts it. */
	int v = xlate_forward(ctx, p, x, rc == BPF_FIB_LKUP_RET_SUCCESS, XDP_PASS);
	if (v != VERDICT_FLOW)
		return v;
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
		/*
		 * Not forwardable: the destination is this host (a reply to a
		 * host-originated flow) or has no route. The kernel delivers the
		 * former and drops the latter (counted in its own statistics).
		 */
		count_action(x->id, x->action, p->len);
		return XDP_PASS;
	}
	if (p->proto == IPPROTO_TCP_ && (p->tcp_flags & TCP_FLAG_SYN)) {
		mtu = 0; /* the device MTU, not a length to check */
		bpf_check_mtu(ctx, out, &mtu, 0, 0);
		mss_clamp(ctx, p, mtu);
	}
	count_action(x->id, x->action, p->len);
	if (out == in)
		return XDP_TX;
	return bpf_redirect(out, 0);
}

#include "srv6.h"

/* roam_srv6_out: a packet of a frontend whose active target is an SRv6 path (in scratch, with its id): encapsulate. */
static __always_inline int roam_srv6_out(struct xdp_md *ctx, struct pkt *p)
{
	struct scratch *sc = scratch();
	if (!sc)
		return XDP_PASS;
	return srv6_encap(ctx, p, &sc->t, sc->id);
}

#include "balancer.h"

/* xdp_ipv6: an Ethernet frame of IPv6 (ethertype only; srv6_input checks the rest). */
static __always_inline int xdp_ipv6(struct xdp_md *ctx)
{
	/* Loaded as the verifier wants them (as cilium's ctx_data_end): plain reads here share their
	 * loads with roam_process's, and clang's 32-bit copy of data_end is a scalar to the verifier. */
	void *data, *data_end;
	asm volatile("%[r] = *(u32 *)(%[c] + %[o])" : [r] "=r"(data) : [c] "r"(ctx), [o] "i"(offsetof(struct xdp_md, data)));
	asm volatile("%[r] = *(u32 *)(%[c] + %[o])"
		     : [r] "=r"(data_end)
		     : [c] "r"(ctx), [o] "i"(offsetof(struct xdp_md, data_end)));
	struct eth_hdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->proto == bpf_htons(ETH_P_IPV6_);
}

SEC("xdp")
int roam_xdp(struct xdp_md *ctx)
{
	/* srv6_input goes on at once for anything but IPv6: not called for it (a call and its frame per IPv4 packet). */
	if (!(ROAM_ABLATE & ABLATE_SRV6) && xdp_ipv6(ctx)) {
		int rc = srv6_input(ctx);
		if (rc == SRV6_DECAP)
			return srv6_decap_reply(ctx);
		if (rc == SRV6_PTB)
			rc = srv6_relay_ptb(ctx);
		if (rc != SRV6_CONTINUE)
			return rc;
	}
	return roam_process(ctx);
}

/* xdp:xdp_redirect_err (a redirect the kernel could not carry out): count this object's (counters.h). */
SEC("tp_btf/xdp_redirect_err")
int roam_redirect_err(__u64 *ctx)
{
	/* TP_PROTO(dev, xdp, tgt, err, map_type, map_id, index): the program is the second. */
	count_redirect_err((const struct bpf_prog *)ctx[1]);
	return 0;
}
