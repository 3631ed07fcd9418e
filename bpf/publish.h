/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Host-port publishing for containers with a network namespace of their
 * own: a client on the host (a host process, or another container) that
 * connects to a published host port on 127.0.0.1, ::1 or one of the host's
 * own addresses is sent to containerIP:containerPort when it calls
 * connect(2), and getpeername(2) shows what it dialled (the services'
 * reverse entries, svc_peers, do that). The container binds its
 * containerPort unchanged in its own namespace.
 *
 * Only the copy on the common ancestor cgroup acts (netns.h), so that every
 * task of the host runs this exactly once, whatever its cgroup.
 *
 * Included by portcullis.c after services.h (remember_peer).
 */
#pragma once

#define PUBLISH_MAX 65536
#define PUBLISH_HOST_ADDRS 4096

/* A published port: in which host namespace (its cookie), which port. */
struct publish_key {
	__u64 netns;
	__u16 port; /* host byte order */
	__u8 protocol;
	__u8 pad[5];
};

/* Where it goes. addr4 is the container's IPv4 address as ::ffff:a.b.c.d
 * (zero if none), addr6 its IPv6 address (zero if none); owner is the
 * container's policy key. */
struct publication {
	__u32 addr4[4];
	__u32 addr6[4];
	__u16 port; /* host byte order */
	__u16 pad;
	__u32 pad2;
	__u64 owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PUBLISH_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct publish_key);
	__type(value, struct publication);
} publications SEC(".maps");

/* The host's own addresses (16 bytes, IPv4 v4-mapped), to the cookie of the
 * host namespace they are configured in: written by the control plane
 * while that namespace has publications. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PUBLISH_HOST_ADDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend_key);
	__type(value, __u64);
} host_addrs SEC(".maps");

static __always_inline bool is_zero6(const __u32 a[4])
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

/* publish_lookup copies into *pub the publication a connect to dst:port
 * reaches and returns true, or returns false. Loopback reaches the ports
 * published in the socket's own namespace; a host address those of the
 * namespace it belongs to. */
static __always_inline bool publish_lookup(struct bpf_sock_addr *ctx, const __u32 dst[4],
					   __u16 port, __u8 protocol, struct publication *pub)
{
	struct publish_key key = {.port = port, .protocol = protocol};
	struct frontend_key host = {};
	struct publication *found;
	__u64 *netns;

	if ((is_v4mapped(dst) && is_loopback4(dst[3])) || is_loopback6(dst)) {
		/* The socket's namespace: its loopback is the one dialled. */
		key.netns = bpf_get_netns_cookie(ctx);
	} else {
		copy6(host.addr, dst);
		netns = bpf_map_lookup_elem(&host_addrs, &host);
		if (!netns)
			return false;
		key.netns = *netns;
	}
	found = bpf_map_lookup_elem(&publications, &key);
	if (!found)
		return false;
	*pub = *found;
	return true;
}

static __always_inline void publish_remember(struct bpf_sock_addr *ctx, const __u32 dst[4],
					     __u16 port, const __u32 to[4], __u16 to_port)
{
	struct pick pk = {.port = to_port};

	copy6(pk.addr, to);
	remember_peer(ctx, &pk, dst, port);
}

/* Part of the one cgroup/connect4 program (portcullis.c), after the
 * container's own rules. */
static __always_inline int publish_connect4(struct bpf_sock_addr *ctx)
{
	__u32 dst[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
	__u16 port = bpf_ntohs(ctx->user_port);
	struct publication pub;

	if (!netns_copy || !publish_lookup(ctx, dst, port, ctx->protocol, &pub) || is_zero6(pub.addr4))
		return SYSCALL_ALLOW;
	ctx->user_ip4 = pub.addr4[3];
	ctx->user_port = bpf_htons(pub.port);
	publish_remember(ctx, dst, port, pub.addr4, pub.port);
	return SYSCALL_ALLOW;
}

static __always_inline int publish_connect6(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs(ctx->user_port);
	struct publication pub;
	__u32 dst[4], to[4];

	if (!netns_copy)
		return SYSCALL_ALLOW;
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	if (!publish_lookup(ctx, dst, port, ctx->protocol, &pub))
		return SYSCALL_ALLOW;
	/* An IPv6 destination goes to the container's IPv6 address, else to
	 * its IPv4 one (a dual-stack socket reaches it v4-mapped). */
	if (!is_v4mapped(dst) && !is_zero6(pub.addr6))
		copy6(to, pub.addr6);
	else
		copy6(to, pub.addr4);
	if (is_zero6(to))
		return SYSCALL_ALLOW;
	ctx->user_ip6[0] = to[0];
	ctx->user_ip6[1] = to[1];
	ctx->user_ip6[2] = to[2];
	ctx->user_ip6[3] = to[3];
	ctx->user_port = bpf_htons(pub.port);
	publish_remember(ctx, dst, port, to, pub.port);
	return SYSCALL_ALLOW;
}
