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

/* Every IPv4/IPv6 socket of an attached container: remember whose it is
 * (accounting.h) and apply the policy's mark and priority. */
SEC("cgroup/sock_create")
int sock_create_marks(struct bpf_sock *sk)
{
	__u64 key;
	struct policy *p = current_policy(&key);
	struct sock_owner *o;

	if (!p)
		return SYSCALL_ALLOW;
	o = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (o)
		owner_of_policy(o, key, p);
	if (p->flags & POLICY_HAS_MARK)
		sk->mark = p->mark;
	if (p->flags & POLICY_HAS_PRIORITY)
		sk->priority = p->priority;
	return SYSCALL_ALLOW;
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
 * storage (accounting.h) is cloned from the listener's. */
SEC("sockops")
int sockops_marks(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk;
	struct sock_owner *o;
	int prio;

	if (ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sk = ops->sk;
	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!o || !(o->flags & OWNER_HAS_PRIORITY))
		return 1;
	prio = o->priority;
	bpf_setsockopt(ops, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
	return 1;
}

/* The container may not undo its marks: with the policy setting them,
 * setsockopt(SO_MARK), setsockopt(SO_PRIORITY) and setsockopt(IP_TOS or
 * IPV6_TCLASS) fail with EPERM. A container with CAP_NET_RAW or
 * CAP_NET_ADMIN could otherwise step out of the filters that match its
 * mark, and any process could change its DSCP (and, through IP_TOS, its
 * priority). */
SEC("cgroup/setsockopt")
int setsockopt_marks(struct bpf_sockopt *ctx)
{
	struct policy *p;
	__u64 key;
	__u32 flag = 0;

	if (ctx->level == SOL_SOCKET && ctx->optname == SO_MARK)
		flag = POLICY_HAS_MARK;
	else if (ctx->level == SOL_SOCKET && ctx->optname == SO_PRIORITY)
		flag = POLICY_HAS_PRIORITY;
	else if ((ctx->level == SOL_IP && ctx->optname == IP_TOS) ||
		 (ctx->level == SOL_IPV6 && ctx->optname == IPV6_TCLASS))
		flag = POLICY_HAS_DSCP;
	/* Beyond a page the program sees only part of the value; 0 tells the
	 * kernel to use the caller's buffer as it is. */
	if (ctx->optlen > 4096)
		ctx->optlen = 0;
	if (!flag)
		return 1;
	p = current_policy(&key);
	return p && (p->flags & flag) ? 0 : 1;
}
