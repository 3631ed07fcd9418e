/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Host-port publishing for containers with a network namespace of their
 * own: a client on the host (a host process, or another container) that
 * connects to a published host port on 127.0.0.1, ::1 or one of the host's
 * own addresses is sent to containerIP:containerPort when it calls
 * connect(2) (or, unconnected UDP, sendmsg(2)), and getpeername(2) and the
 * source of UDP replies (recvmsg(2)) show what it dialled: the services'
 * reverse entries (svc_peers, svc_udp_peers) do that. The container binds
 * its containerPort unchanged in its own namespace.
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
 * container's policy key. host_addr is the mapping's hostIP (IPv4
 * v4-mapped): only a client dialling that address is translated; zero
 * means any of the namespace's addresses, loopback included (last, so a
 * publication of layout 2 zero-extended by the upgrade means that). */
struct publication {
	__u32 addr4[4];
	__u32 addr6[4];
	__u16 port; /* host byte order */
	__u16 pad;
	__u32 pad2;
	__u64 owner;
	__u32 host_addr[4];
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

/* The sysctls that let a socket bind an address that is not local. Only
 * these fields; CO-RE fixes the offsets in the kernel's struct net. */
struct netns_ipv4___publish {
	__u8 sysctl_ip_nonlocal_bind;
} __attribute__((preserve_access_index));

struct netns_sysctl_ipv6___publish {
	__u8 ip_nonlocal_bind;
} __attribute__((preserve_access_index));

struct netns_ipv6___publish {
	struct netns_sysctl_ipv6___publish sysctl;
} __attribute__((preserve_access_index));

struct net___publish {
	struct netns_ipv4___publish ipv4;
	struct netns_ipv6___publish ipv6;
} __attribute__((preserve_access_index));

#define LOCAL_UNKNOWN 0
#define LOCAL_YES 1
#define LOCAL_NO 2

/* Is dst an address of the caller's own namespace, now? The kernel answers:
 * bpf_bind(dst, port 0) succeeds only for a local address (inet_bind's and
 * inet6_bind's own check), so an address added to the host after the port
 * was published is published at once, and a removed one no longer is. The
 * bind is what the kernel would do anyway: a socket dialling a local
 * address leaves from it. Only a connect of a socket not bound yet can ask
 * (bpf_bind exists in connect4/6 only, and binds only once), and only
 * while the namespace's ip_nonlocal_bind sysctl is off (else every bind
 * succeeds); otherwise LOCAL_UNKNOWN, and host_addrs answers. */
static __always_inline int local_now(struct bpf_sock_addr *ctx, const __u32 dst[4], bool sendmsg)
{
	struct bpf_sock *sk = ctx->sk;
	struct task_struct *task;
	struct net___publish *net;

	if (sendmsg || !sk || sk->src_port != 0)
		return LOCAL_UNKNOWN;
	task = bpf_get_current_task_btf();
	net = (void *)task->nsproxy->net_ns;
	if (ctx->user_family == AF_INET) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = dst[3]};

		if (sk->src_ip4 != 0 || net->ipv4.sysctl_ip_nonlocal_bind)
			return LOCAL_UNKNOWN;
		return bpf_bind(ctx, (struct sockaddr *)&sin, sizeof(sin)) ? LOCAL_NO : LOCAL_YES;
	}
	{
		struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};

		if (sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3])
			return LOCAL_UNKNOWN;
		if (is_v4mapped(dst) ? net->ipv4.sysctl_ip_nonlocal_bind : net->ipv6.sysctl.ip_nonlocal_bind)
			return LOCAL_UNKNOWN;
		sin6.sin6_addr.in6_u.u6_addr32[0] = dst[0];
		sin6.sin6_addr.in6_u.u6_addr32[1] = dst[1];
		sin6.sin6_addr.in6_u.u6_addr32[2] = dst[2];
		sin6.sin6_addr.in6_u.u6_addr32[3] = dst[3];
		return bpf_bind(ctx, (struct sockaddr *)&sin6, sizeof(sin6)) ? LOCAL_NO : LOCAL_YES;
	}
}

/* A publication reached on dst (its hostIP, if it has one, is dst). */
static __always_inline struct publication *publication_of(struct publish_key *key,
							  const __u32 dst[4])
{
	struct publication *found = bpf_map_lookup_elem(&publications, key);

	if (!found || (!is_zero6(found->host_addr) && !equal6(found->host_addr, dst)))
		return NULL;
	return found;
}

/* publish_lookup copies into *pub the publication a connect (or a
 * datagram) to dst:port reaches and returns true, or returns false.
 *
 * - Loopback reaches the ports published in the socket's own namespace.
 * - Another address reaches them when it is an address of that namespace:
 *   asked of the kernel when it can be (local_now), else looked up in
 *   host_addrs, the namespace's addresses as they were when a port was
 *   last published there.
 * - An address of another namespace with publications (a container
 *   dialling the host's address) reaches that namespace's, by host_addrs.
 */
static __always_inline bool publish_lookup(struct bpf_sock_addr *ctx, const __u32 dst[4],
					   __u16 port, __u8 protocol, bool sendmsg,
					   struct publication *pub)
{
	struct publish_key key = {.port = port, .protocol = protocol};
	struct frontend_key host = {};
	struct publication *found;
	__u64 own = bpf_get_netns_cookie(ctx);
	__u64 *netns;
	int local;

	key.netns = own;
	if ((is_v4mapped(dst) && is_loopback4(dst[3])) || is_loopback6(dst)) {
		found = publication_of(&key, dst);
		if (!found)
			return false;
		*pub = *found;
		return true;
	}
	copy6(host.addr, dst);
	found = publication_of(&key, dst);
	/* An IPv6 destination sent to the container's IPv4 address (it has
	 * no IPv6 one) cannot leave from the IPv6 address bound to ask. */
	if (found && (is_v4mapped(dst) || !is_zero6(found->addr6))) {
		local = local_now(ctx, dst, sendmsg);
		if (local == LOCAL_YES) {
			*pub = *found;
			return true;
		}
		if (local == LOCAL_NO)
			return false;
	}
	netns = bpf_map_lookup_elem(&host_addrs, &host);
	if (!netns)
		return false;
	if (*netns != own) {
		key.netns = *netns;
		found = publication_of(&key, dst);
	}
	if (!found)
		return false;
	*pub = *found;
	return true;
}

/* What the reverse translation needs, written as the services write it
 * (services.h): a connected socket's peer for getpeername4/6 (and, for
 * UDP, its replies), or, per datagram of an unconnected UDP socket, the
 * source its replies are shown to come from in recvmsg4/6. */
static __always_inline void publish_remember(struct bpf_sock_addr *ctx, const __u32 dst[4],
					     __u16 port, const __u32 to[4], __u16 to_port,
					     bool sendmsg)
{
	struct pick pk = {.port = to_port};

	copy6(pk.addr, to);
	if (sendmsg)
		remember_udp_peer(bpf_get_socket_cookie(ctx), &pk, dst, port);
	else
		remember_peer(ctx, &pk, dst, port);
}

/* connect4 (TCP, connected UDP) and sendmsg4 (each datagram of an
 * unconnected UDP socket) translate alike. */
static __always_inline int publish4(struct bpf_sock_addr *ctx, bool sendmsg)
{
	__u32 dst[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
	__u16 port = bpf_ntohs(ctx->user_port);
	struct publication pub;

	if (!netns_copy || !publish_lookup(ctx, dst, port, ctx->protocol, sendmsg, &pub) ||
	    is_zero6(pub.addr4))
		return SYSCALL_ALLOW;
	ctx->user_ip4 = pub.addr4[3];
	ctx->user_port = bpf_htons(pub.port);
	publish_remember(ctx, dst, port, pub.addr4, pub.port, sendmsg);
	return SYSCALL_ALLOW;
}

static __always_inline int publish6(struct bpf_sock_addr *ctx, bool sendmsg)
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
	if (!publish_lookup(ctx, dst, port, ctx->protocol, sendmsg, &pub))
		return SYSCALL_ALLOW;
	/* An IPv6 destination goes to the container's IPv6 address, else to
	 * its IPv4 one (a dual-stack socket reaches it v4-mapped), except for
	 * a datagram of an unconnected socket: the kernel refuses a sendmsg6
	 * rewritten to a v4-mapped address (ENOTSUPP), so that one is left
	 * alone. A v4-mapped destination is sendmsg4's: the kernel hands the
	 * datagram to the IPv4 path. */
	if (!is_v4mapped(dst) && !is_zero6(pub.addr6))
		copy6(to, pub.addr6);
	else if (!sendmsg || is_v4mapped(dst))
		copy6(to, pub.addr4);
	else
		return SYSCALL_ALLOW;
	if (is_zero6(to))
		return SYSCALL_ALLOW;
	ctx->user_ip6[0] = to[0];
	ctx->user_ip6[1] = to[1];
	ctx->user_ip6[2] = to[2];
	ctx->user_ip6[3] = to[3];
	ctx->user_port = bpf_htons(pub.port);
	publish_remember(ctx, dst, port, to, pub.port, sendmsg);
	return SYSCALL_ALLOW;
}

/* Parts of the one cgroup/connect4, connect6, sendmsg4 and sendmsg6
 * programs (portcullis.c), after the container's own rules. */
static __always_inline int publish_connect4(struct bpf_sock_addr *ctx)
{
	return publish4(ctx, false);
}

static __always_inline int publish_connect6(struct bpf_sock_addr *ctx)
{
	return publish6(ctx, false);
}

/* Unconnected UDP. The replies are shown to come from what was dialled by
 * the services' recvmsg4/6, which the namespace copy attaches too. */
static __always_inline int publish_sendmsg4(struct bpf_sock_addr *ctx)
{
	return publish4(ctx, true);
}

static __always_inline int publish_sendmsg6(struct bpf_sock_addr *ctx)
{
	return publish6(ctx, true);
}
