/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Isolation: a container in the host network namespace must not step on a
 * neighbour's addresses, ports or sources (docs/security.md).
 *
 * - Address ownership: iso_owners maps (network namespace, address) to the
 *   number of attachments whose policies have that address (a pod's
 *   containers share one); pkg/isolation writes it at attach and detach. A
 *   bind to, or a UDP source (IP_PKTINFO, IPV6_PKTINFO) of, an address
 *   owned by attachments other than the container's fails with EPERM.
 * - Port sharing: a bind to a port where a socket of another owner (the
 *   host or another container) already listens (TCP) or is bound (UDP) on
 *   an overlapping address fails with EADDRINUSE, as it would without
 *   SO_REUSEPORT/SO_REUSEADDR. Sockets are tagged with their owner in
 *   iso_socks when they bind.
 * - Shared loopback (a loopback address the container does not own, e.g.
 *   127.0.0.1): the bind clears SO_REUSEPORT (and SO_REUSEADDR for UDP),
 *   and setsockopt cannot set them again, so no later socket can join or
 *   shadow the container's.
 * - A v6-only "::" bind in a container with only an IPv4 address is parked
 *   on [::1]:0, so servers that probe for IPv6 (nginx, redis) start.
 * - Raw and ICMP datagram sockets are refused at creation for containers
 *   with addresses unless the policy allows them: they never pass the bind
 *   hook, so they could use any source. (cgroup/sock_create never runs for
 *   AF_PACKET sockets; docs/security.md says what must deny those.)
 *
 * Included by portcullis.c after current_policy(), the address helpers and
 * services.h (copy6).
 */
#pragma once

#include <bpf/bpf_core_read.h>
#include "kernel.h"

#define EADDRINUSE 98

#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define SO_REUSEPORT 15

#define POLICY_HAS_ADDR (POLICY_HAS_ADDR4 | POLICY_HAS_ADDR6)

/* A socket bound to a loopback address its container does not own. */
#define ISO_SHARED (1U << 0)

struct owner_key {
	__u64 netns; /* network namespace cookie */
	__u32 addr[4]; /* IPv4 as ::ffff:a.b.c.d */
};

struct sock_tag {
	__u64 owner; /* the key current_policy() gave when it bound */
	__u32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	/* Written at attach only: an entry costs memory while it exists. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct owner_key);
	__type(value, __u64); /* how many attachments have the address */
} iso_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_tag);
} iso_socks SEC(".maps");

/* Is addr (16 bytes, v4-mapped for IPv4) an attachment's address in this
 * socket's network namespace? Callers ask only about addresses that are
 * not the container's own, so any owner is another attachment. */
static __always_inline bool owned_by_other(void *ctx, const __u32 addr[4])
{
	struct owner_key k = {.netns = bpf_get_netns_cookie(ctx)};

	copy6(k.addr, addr);
	return bpf_map_lookup_elem(&iso_owners, &k) != NULL;
}

static __always_inline bool own_address(const struct policy *p, const __u32 addr[4])
{
	if (is_v4mapped(addr))
		return (p->flags & POLICY_HAS_ADDR4) && addr[3] == p->addr4;
	return (p->flags & POLICY_HAS_ADDR6) && equal6(addr, p->addr6);
}

/* May the container use addr as a source or bind address? Its own, yes;
 * another attachment's, never; otherwise what bind4/bind6 allow: anything
 * for a container without addresses, loopback for one with. */
static __always_inline bool address_allowed(void *ctx, const struct policy *p, const __u32 addr[4])
{
	if (own_address(p, addr))
		return true;
	if (owned_by_other(ctx, addr))
		return false;
	if (!(p->flags & POLICY_HAS_ADDR))
		return true;
	return is_v4mapped(addr) ? is_loopback4(addr[3]) : is_loopback6(addr);
}

/* Is the socket IPV6_V6ONLY? struct bpf_sock does not say; the kernel's
 * struct sock does. */
static __always_inline bool isolation_v6only(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock *s;

	if (!sk)
		return false;
	s = kernel_sock(sk);
	return BPF_CORE_READ_BITFIELD(&s->__sk_common, skc_ipv6only);
}

/* Does a socket of another owner already listen (TCP) or sit bound (UDP)
 * where this bind would go? The lookup is the kernel's own: it finds an
 * exact or a wildcard match, and a member of a reuseport group. */
static __always_inline bool foreign_socket(struct bpf_sock_addr *ctx, __u64 key,
					   const __u32 addr[4], __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *found;
	struct sock_tag *tag;
	__u32 size;
	bool foreign;

	if (is_v4mapped(addr)) {
		t.ipv4.saddr = addr[3];
		t.ipv4.daddr = addr[3];
		t.ipv4.sport = bpf_htons(1);
		t.ipv4.dport = bpf_htons(port);
		size = sizeof(t.ipv4);
	} else {
		copy6(t.ipv6.saddr, addr);
		copy6(t.ipv6.daddr, addr);
		t.ipv6.sport = bpf_htons(1);
		t.ipv6.dport = bpf_htons(port);
		size = sizeof(t.ipv6);
	}
	if (ctx->protocol == IPPROTO_TCP)
		found = bpf_sk_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	else if (ctx->protocol == IPPROTO_UDP)
		found = bpf_sk_lookup_udp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	else
		return false;
	if (!found)
		return false;
	tag = bpf_sk_storage_get(&iso_socks, found, 0, 0);
	foreign = !tag || tag->owner != key;
	bpf_sk_release(found);
	return foreign;
}

/* The last step of bind4/bind6, once the address and port are final.
 * addr is 16 bytes (v4-mapped for IPv4). */
static __always_inline int isolation_bind(struct bpf_sock_addr *ctx, __u64 key,
					  const struct policy *p, const __u32 addr[4])
{
	struct bpf_sock *sk = ctx->sk;
	__u16 port = bpf_ntohs(ctx->user_port);
	struct sock_tag *tag;
	bool shared = false;
	int off = 0;

	if (!sk)
		return SYSCALL_ALLOW;
	if (!own_address(p, addr)) {
		if (!is_any6(addr) && !(is_v4mapped(addr) && addr[3] == 0) &&
		    owned_by_other(ctx, addr))
			return SYSCALL_DENY;
		shared = p->flags & POLICY_HAS_ADDR;
	}
	if (shared) {
		bpf_setsockopt(ctx, SOL_SOCKET, SO_REUSEPORT, &off, sizeof(off));
		if (ctx->protocol == IPPROTO_UDP)
			bpf_setsockopt(ctx, SOL_SOCKET, SO_REUSEADDR, &off, sizeof(off));
	} else if (port == 0) {
		/* A fresh ephemeral port: nothing to share, nothing to tag
		 * (the bind benchmark's path). */
		return SYSCALL_ALLOW;
	}
	if (port != 0 && foreign_socket(ctx, key, addr, port)) {
		bpf_set_retval(-EADDRINUSE);
		return SYSCALL_DENY;
	}
	tag = bpf_sk_storage_get(&iso_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (tag) {
		tag->owner = key;
		tag->flags = shared ? ISO_SHARED : 0;
	}
	return SYSCALL_ALLOW;
}

static __always_inline int isolation_bind4(struct bpf_sock_addr *ctx, __u64 key,
					   const struct policy *p)
{
	__u32 addr[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};

	return isolation_bind(ctx, key, p, addr);
}

static __always_inline int isolation_bind6(struct bpf_sock_addr *ctx, __u64 key,
					   const struct policy *p)
{
	__u32 addr[4];

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	/* bind6 left "::" alone for a v6-only socket of an IPv4-only
	 * container: park it on an ephemeral port of ::1, where it collides
	 * with nothing and nobody sends to it. */
	if (is_any6(addr) && (p->flags & POLICY_HAS_ADDR) == POLICY_HAS_ADDR4) {
		ctx->user_ip6[3] = bpf_htonl(1);
		ctx->user_port = 0;
		return SYSCALL_ALLOW;
	}
	return isolation_bind(ctx, key, p, addr);
}

/* sendmsg4/sendmsg6: a source the application chose with IP_PKTINFO or
 * IPV6_PKTINFO must be one it could bind. */
static __always_inline bool isolation_source4(struct bpf_sock_addr *ctx, __u64 key,
					      const struct policy *p)
{
	__u32 src[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->msg_src_ip4};

	return src[3] == 0 || address_allowed(ctx, p, src);
}

static __always_inline bool isolation_source6(struct bpf_sock_addr *ctx, __u64 key,
					      const struct policy *p)
{
	__u32 src[4];

	src[0] = ctx->msg_src_ip6[0];
	src[1] = ctx->msg_src_ip6[1];
	src[2] = ctx->msg_src_ip6[2];
	src[3] = ctx->msg_src_ip6[3];
	return is_any6(src) || address_allowed(ctx, p, src);
}

/* Raw IPv4/IPv6 sockets and ICMP datagram ("ping") sockets: they never pass
 * the bind hook. Part of the one cgroup/sock_create program (portcullis.c),
 * for a socket of a container with policy p. */
static __always_inline bool isolation_checks_socket(const struct bpf_sock *sk)
{
	return sk->type == SOCK_RAW ||
	       (sk->type == SOCK_DGRAM &&
		(sk->protocol == IPPROTO_ICMP || sk->protocol == IPPROTO_ICMPV6));
}

static __always_inline bool isolation_socket_denied(const struct bpf_sock *sk,
						    const struct policy *p)
{
	if (!isolation_checks_socket(sk))
		return false;
	return (p->flags & POLICY_HAS_ADDR) && !(p->flags & POLICY_ALLOW_RAW);
}

/* Is this a setsockopt isolation cares about? The one cgroup/setsockopt
 * program (portcullis.c) asks first, so every other option costs nothing
 * more. */
static __always_inline bool isolation_option(const struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (ctx->level != SOL_SOCKET || !sk)
		return false;
	return ctx->optname == SO_REUSEPORT ||
	       (ctx->optname == SO_REUSEADDR && sk->protocol == IPPROTO_UDP);
}

/* A socket on shared loopback cannot turn SO_REUSEPORT (or, for UDP,
 * SO_REUSEADDR) back on after its bind cleared it. */
static __always_inline int isolation_setsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_tag *tag;
	int *val;

	if (!sk)
		return SYSCALL_ALLOW;
	tag = bpf_sk_storage_get(&iso_socks, sk, 0, 0);
	if (!tag || !(tag->flags & ISO_SHARED))
		return SYSCALL_ALLOW;
	val = ctx->optval;
	if ((void *)(val + 1) > ctx->optval_end || *val != 0)
		return SYSCALL_DENY;
	return SYSCALL_ALLOW;
}
