// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Traffic counters of attachments keyed by network namespace (pods through
 * the CRI, netns.h).
 *
 * Their socket hooks run on a common ancestor cgroup (the cgroup v2 root),
 * where cgroup_skb programs would run for every packet of the host. These
 * tcx programs run instead on the interfaces inside the pod's namespace
 * (its CNI interface and lo), so only the pod's packets pay for them. The
 * attachment is the namespace itself: the key is NETNS_KEY | the cookie of
 * the namespace of the packet's device (read through bpf_cast_to_kern_ctx,
 * Linux 6.3+), so one pair of programs, loaded once per state, serves
 * every pod.
 *
 * They count into the traffic map of portcullis.c (traffic.h; the pinned
 * map is passed as a replacement) exactly as the cgroup_skb programs do:
 * per direction (ingress: the pod receives; egress: the pod sends), family
 * and protocol, bytes at the IP layer (the link-layer header is left
 * out), GSO segments as packets. The protocol is the IP header's (IPv6: the next
 * header right after the fixed header), since an arriving packet has no
 * socket yet.
 *
 * They return TCX_NEXT: counting never decides a packet's fate, and later
 * programs on the interface run as if these were not there.
 */
#include "common.h"
#include "netns.h"
#include "traffic.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCX_NEXT -1

/* The kernel's skb and device, only the fields read (CO-RE). */
struct net_device {
	struct {
		struct net *net;
	} nd_net;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct net_device *dev;
	unsigned char *head;
	unsigned char *data;
	__u16 network_header;
} __attribute__((preserve_access_index));

/* The kernel's struct sk_buff behind the program's __sk_buff (Linux 6.3+):
 * its device's namespace, which bpf_get_netns_cookie does not give for an
 * arriving packet (it reads the packet's socket, and there is none yet). */
extern void *bpf_cast_to_kern_ctx(void *ctx) __ksym;

static __always_inline int count(struct __sk_buff *ctx, __u32 direction)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	struct net_device *dev = skb->dev;
	struct traffic_counts *t;
	__u32 family, proto = ACCT_OTHER, len = ctx->len, l2;
	__u64 key;
	__u8 l4;

	if (!dev)
		return TCX_NEXT;
	key = NETNS_KEY | dev->nd_net.net->net_cookie;
	t = bpf_map_lookup_elem(&traffic, &key);
	if (!t)
		return TCX_NEXT;
	if (ctx->protocol == bpf_htons(ETH_P_IP)) {
		family = ACCT_IPV4;
		if (bpf_skb_load_bytes_relative(ctx, 9, &l4, 1, BPF_HDR_START_NET) < 0)
			l4 = 0;
	} else if (ctx->protocol == bpf_htons(ETH_P_IPV6)) {
		family = ACCT_IPV6;
		if (bpf_skb_load_bytes_relative(ctx, 6, &l4, 1, BPF_HDR_START_NET) < 0)
			l4 = 0;
	} else {
		return TCX_NEXT;
	}
	if (l4 == IPPROTO_TCP)
		proto = ACCT_TCP;
	else if (l4 == IPPROTO_UDP)
		proto = ACCT_UDP;
	/* The link-layer header in front of the IP header (14 bytes on
	 * Ethernet and lo, none on a tun) is not counted. */
	l2 = (__u32)(skb->head + skb->network_header - skb->data);
	if (l2 < len)
		len -= l2;
	traffic_add(t, direction, family, proto, ctx->gso_segs, len);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int netns_traffic_ingress(struct __sk_buff *skb)
{
	return count(skb, ACCT_INGRESS);
}

SEC("tcx/egress")
int netns_traffic_egress(struct __sk_buff *skb)
{
	return count(skb, ACCT_EGRESS);
}
