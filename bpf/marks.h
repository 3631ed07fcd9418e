/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Marks, priority and DSCP: what a container's sockets put on their
 * packets, for filtering and QoS on the host and the network (seed 003).
 *
 * What works where on 6.x kernels:
 * - cgroup/sock_create may write sk->mark and sk->priority directly, for
 *   every IPv4/IPv6 socket the container creates, but may not call
 *   bpf_setsockopt; neither may post_bind (both are BPF_PROG_TYPE_CGROUP_SOCK).
 * - The sock_addr hooks (bind, connect, sendmsg) may call bpf_setsockopt,
 *   so DSCP (IP_TOS, IPV6_TCLASS) is set there: at bind for servers
 *   (accepted TCP sockets inherit it from the listener), at connect for
 *   clients and connected UDP, at the first sendmsg for unconnected UDP.
 *   An AF_INET6 socket gets both, so its v4-mapped traffic is marked too.
 * - Setting IP_TOS makes the kernel recompute sk->priority from the TOS,
 *   so the policy's priority is set again after it.
 * - A few packets do not take the socket's priority (the SYN-ACK of a
 *   listener's request socket), so the cgroup_skb egress program
 *   (accounting.h) writes skb->mark and skb->priority on every packet.
 * - cgroup/setsockopt keeps the container from changing them afterwards.
 * - The kernel reads the TOS of an unconnected UDP datagram before the
 *   sendmsg hook runs, so on a socket that was never bound or connected
 *   the first datagram leaves without the DSCP; the later ones have it.
 *
 * Included by portcullis.c after current_policy() and accounting.h.
 */
#pragma once

#define SOL_SOCKET 1
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_PRIORITY 12
#define SO_MARK 36
#define IP_TOS 1
#define IPV6_TCLASS 67

/* Every IPv4/IPv6 socket of an attached container: apply the policy's
 * mark and priority. Part of the one cgroup/sock_create program
 * (portcullis.c). The socket gets its storage (accounting.h) here only when
 * something needs it later: the DSCP-applied flag, the priority an
 * accepted socket takes from its listener (sockops below), or, in the
 * namespace copy, the key (a namespace's key cannot be told from the
 * socket's cgroup). Other sockets are accounted by their cgroup; creating
 * and freeing the storage of every socket cost about a microsecond each
 * (docs/performance.md). */
static __always_inline void marks_sock_create(struct bpf_sock *sk, __u64 key,
					      const struct policy *p)
{
	struct sock_owner *o;

	if (netns_copy || (p->flags & (POLICY_HAS_MARK | POLICY_HAS_PRIORITY | POLICY_HAS_DSCP))) {
		o = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (o)
			owner_of_policy(o, key, p);
	}
	if (p->flags & POLICY_HAS_MARK)
		sk->mark = p->mark;
	if (p->flags & POLICY_HAS_PRIORITY)
		sk->priority = p->priority;
}

/* Set the policy's DSCP on the socket of a bind, connect or sendmsg, once
 * per socket (sendmsg runs for every datagram). */
static __always_inline void apply_dscp(struct bpf_sock_addr *ctx, const struct policy *p)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_owner *o;
	int tos, prio;

	if (!(p->flags & POLICY_HAS_DSCP) || !sk)
		return;
	o = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (o && (o->flags & OWNER_DSCP_APPLIED))
		return;
	tos = p->dscp << 2;
	bpf_setsockopt(ctx, SOL_IP, IP_TOS, &tos, sizeof(tos));
	if (ctx->family == AF_INET6)
		bpf_setsockopt(ctx, SOL_IPV6, IPV6_TCLASS, &tos, sizeof(tos));
	if (p->flags & POLICY_HAS_PRIORITY) {
		prio = p->priority;
		bpf_setsockopt(ctx, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
	}
	if (o)
		o->flags |= OWNER_DSCP_APPLIED;
}

/* A TCP socket accepted by a listener is a clone whose priority the kernel
 * does not keep, so it gets the policy's again once established. Its
 * storage (accounting.h) is cloned from the listener's. Part of the one
 * sockops program (portcullis.c). */
static __always_inline void marks_sockops(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk;
	struct sock_owner *o;
	int prio;

	if (ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return;
	sk = ops->sk;
	if (!sk)
		return;
	o = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!o && netns_copy) {
		/* Not cloned from the listener: a namespace-keyed pod's
		 * accepted socket is recorded here, by its namespace, so
		 * that accounting (accounting.h) counts it. A host's
		 * accepted connection pays this lookup once. */
		__u64 key = NETNS_KEY | bpf_get_netns_cookie(ops);
		struct policy *p = bpf_map_lookup_elem(&policies, &key);

		if (!p)
			return;
		o = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!o)
			return;
		owner_of_policy(o, key, p);
	}
	if (!o || !(o->flags & OWNER_HAS_PRIORITY))
		return;
	prio = o->priority;
	bpf_setsockopt(ops, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
}

/* The container may not undo its marks: with the policy setting them,
 * setsockopt(SO_MARK), setsockopt(SO_PRIORITY) and setsockopt(IP_TOS or
 * IPV6_TCLASS) fail with EPERM. A container with CAP_NET_RAW or
 * CAP_NET_ADMIN could otherwise step out of the filters that match its
 * mark, and any process could change its DSCP (and, through IP_TOS, its
 * priority). marks_option says which policy flag guards an option (0:
 * none); the one cgroup/setsockopt program (portcullis.c) looks the policy
 * up only for those. */
static __always_inline __u32 marks_option(int level, int optname)
{
	if (level == SOL_SOCKET && optname == SO_MARK)
		return POLICY_HAS_MARK;
	if (level == SOL_SOCKET && optname == SO_PRIORITY)
		return POLICY_HAS_PRIORITY;
	if ((level == SOL_IP && optname == IP_TOS) || (level == SOL_IPV6 && optname == IPV6_TCLASS))
		return POLICY_HAS_DSCP;
	return 0;
}
