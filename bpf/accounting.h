/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Traffic accounting: cgroup_skb ingress and egress programs count the
 * packets and bytes of every attached container, per direction, address
 * family (of the packet on the wire) and protocol (of the socket).
 *
 * Which attachment a packet belongs to: cgroup_skb programs run in softirq
 * or for whichever task happens to send, so the current task's cgroup says
 * nothing. The socket does: its cgroup (the creating task's; an accepted
 * TCP socket has its listener's) is looked up in the policies map. A
 * socket whose policy needs storage anyway (marks, priority, DSCP; the
 * namespace copy) gets the key that current_policy() returned for the
 * creating task there at sock_create (marks.h), and accepted TCP sockets
 * inherit it from their listener (BPF_F_CLONE). A socket of a cgroup
 * nested below the attached one stores what the ancestor walk found at its
 * first packet.
 *
 * The egress program also sets the policy's mark and priority on each
 * packet (see marks.h for why).
 *
 * The same programs, in the copy loaded with netns_copy = 1 (netns.h),
 * run on the common ancestor cgroup of namespace-keyed attachments (pods
 * through the CRI): there they count only the sockets sock_create recorded
 * for such an attachment, whatever their cgroup, and a host packet costs
 * one socket-storage lookup that misses.
 *
 * Counters are per-CPU entries created by pkg/state at attach time; the
 * programs never allocate an entry. Bytes are skb->len at the network
 * layer (IP header included); packets count GSO/GRO segments.
 *
 * Included by portcullis.c after the policies map.
 */
#pragma once

#include "kernel.h"
#include "owners.h"
#include "netns.h"
#include "traffic.h"

/* The attachment of a socket by the socket's cgroup: the deepest attached
 * ancestor, as current_policy() finds it. *walked says whether it took
 * more than the one lookup of the socket's own cgroup. */
static __always_inline bool skb_owner_by_cgroup(struct __sk_buff *skb, struct sock_owner *o,
						bool *walked)
{
	__u64 id = bpf_skb_cgroup_id(skb), key = id;
	struct policy *p = bpf_map_lookup_elem(&policies, &id);

	*walked = !p;
	for (int level = 1; !p && level < MAX_CGROUP_DEPTH; level++) {
		__u64 ancestor = bpf_skb_ancestor_cgroup_id(skb, level);
		struct policy *ap;

		if (ancestor == 0 || ancestor == id)
			break;
		ap = bpf_map_lookup_elem(&policies, &ancestor);
		if (ap) {
			p = ap;
			key = ancestor;
		}
	}
	if (!p)
		return false;
	owner_of_policy(o, key, p);
	return true;
}

/* Fill *o for the packet; sk is its full socket, or NULL (a request or
 * timewait socket: its listener's cgroup decides). A socket without
 * storage (most: marks.h creates it only when needed) is found by its
 * cgroup, one lookup when the attachment is its own cgroup's; only a
 * socket of a nested cgroup stores what the walk found, so that it walks
 * once. */
static __always_inline bool skb_owner(struct __sk_buff *skb, struct bpf_sock *sk,
				      struct sock_owner *o)
{
	struct sock_owner *stored;
	bool walked;

	if (sk) {
		stored = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
		if (stored) {
			*o = *stored;
			return true;
		}
	}
	if (!skb_owner_by_cgroup(skb, o, &walked))
		return false;
	if (!sk || !walked)
		return true;
	stored = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (stored)
		*stored = *o;
	return true;
}

/* The counters' family of a packet (ACCT_FAMILIES, which traffic_add
 * skips, for neither) and protocol of a socket. */
static __always_inline __u32 acct_family(const struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return ACCT_IPV4;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return ACCT_IPV6;
	return ACCT_FAMILIES;
}

static __always_inline __u32 acct_protocol(__u32 protocol)
{
	if (protocol == IPPROTO_TCP)
		return ACCT_TCP;
	if (protocol == IPPROTO_UDP)
		return ACCT_UDP;
	return ACCT_OTHER;
}

/* The fast path, for most packets: a socket without local storage (its
 * policy has no mark, priority or DSCP, so there is nothing to put on the
 * packet that the kernel did not) of a cgroup that is attached itself,
 * whose counters are keyed by its cgroup id. The socket is read directly
 * (kernel_sock), so the one call is the counters' lookup: every call costs
 * tens of nanoseconds per packet. The kernel runs cgroup_skb programs only
 * for full sockets (a SYN-ACK for its listener). Returns false for
 * anything else, which takes the full path below: a socket with storage,
 * one of a nested cgroup (its own id has no counters), the namespace copy. */
static __always_inline bool account_fast(struct __sk_buff *skb, __u32 direction)
{
	struct bpf_sock *bsk = skb->sk;
	struct traffic_counts *t;
	struct sock *sk;
	__u64 id;

	if (netns_copy || !bsk)
		return false;
	sk = kernel_sock(bsk);
	if (sk->sk_bpf_storage)
		return false;
	id = sk->sk_cgrp_data.cgroup->kn->id;
	t = bpf_map_lookup_elem(&traffic, &id);
	if (!t)
		return false;
	traffic_add(t, direction, acct_family(skb), acct_protocol(sk->sk_protocol), skb->gso_segs,
		    skb->len);
	return true;
}

static __always_inline int account(struct __sk_buff *skb, __u32 direction)
{
	struct bpf_sock *sk = skb->sk;
	struct sock_owner o = {};
	struct traffic_counts *t;

	if (account_fast(skb, direction))
		return SYSCALL_ALLOW;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (netns_copy) {
		/* On the common ancestor (netns.h), every packet of the host
		 * runs this: only a socket that sock_create recorded as a
		 * namespace-keyed attachment's counts, and anything else
		 * costs one storage lookup that misses (no cgroup walk). */
		struct sock_owner *stored;

		if (!sk)
			return SYSCALL_ALLOW;
		stored = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
		if (!stored || !(stored->key & NETNS_KEY))
			return SYSCALL_ALLOW;
		o = *stored;
	} else if (!skb_owner(skb, sk, &o) || (o.key & NETNS_KEY)) {
		/* Not attached, or a namespace-keyed attachment's socket:
		 * the copy on the common ancestor counts that one. */
		return SYSCALL_ALLOW;
	}
	/* Packets the kernel sends for a socket without using its own
	 * priority and mark (the SYN-ACK of a request socket) get them
	 * here; for the others this changes nothing. */
	if (direction == ACCT_EGRESS) {
		if (o.flags & OWNER_HAS_MARK)
			skb->mark = o.mark;
		if (o.flags & OWNER_HAS_PRIORITY)
			skb->priority = o.priority;
	}
	t = bpf_map_lookup_elem(&traffic, &o.key);
	if (!t)
		return SYSCALL_ALLOW;
	traffic_add(t, direction, acct_family(skb), sk ? acct_protocol(sk->protocol) : ACCT_OTHER,
		    skb->gso_segs, skb->len);
	return SYSCALL_ALLOW;
}

/* Both return 1: accounting never drops a packet. */
SEC("cgroup_skb/ingress")
int account_ingress(struct __sk_buff *skb)
{
	return account(skb, ACCT_INGRESS);
}

SEC("cgroup_skb/egress")
int account_egress(struct __sk_buff *skb)
{
	return account(skb, ACCT_EGRESS);
}
