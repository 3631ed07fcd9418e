/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Services: the port registry, connect-time resolution of frontends to
 * backends, and the reverse translation that keeps getpeername(2) and UDP
 * reply sources showing what the application dialled.
 *
 * Who writes what:
 * - the control plane (pkg/services) writes frontends, the per-service
 *   backend count and the backend slots;
 * - post_bind4/6 (UDP: every bound socket), the sockops listen callback
 *   (TCP: every listening socket) and sock_release write the registry of
 *   an attached container's sockets and its index by (cgroup, port,
 *   protocol, family), which is what makes a "provides" backend live. A
 *   TCP socket is registered when it listens, not when it binds: only a
 *   listener can be a backend, and registering (and, at close, deleting)
 *   every bound socket doubled the cost of a client's bind;
 * - connect4/6 and sendmsg4/6 write the reverse entries they read back in
 *   getpeername4/6 and recvmsg4/6.
 *
 * Addresses are 16 bytes everywhere, IPv4 as ::ffff:a.b.c.d, in network
 * byte order; ports are in host byte order.
 *
 * Included by portcullis.c after current_policy() and the address helpers.
 */
#pragma once

#define ECONNREFUSED 111

#define SVC_NAME_MAX 64
#define SVC_MAX_SERVICES 65536
#define SVC_MAX_FRONTENDS 65536
#define SVC_MAX_BACKENDS 131072
#define SVC_MAX_REGISTRY 131072
/* LRU maps cannot skip preallocation: 32768 of each cost 7 MiB (131072
 * cost 29 MiB, half of an empty state). Beyond that many sockets connected
 * through frontends at once the oldest translation is dropped (see
 * docs/scale.md; portcullisctl load --max-peers sizes them). */
#define SVC_MAX_PEERS 32768

/* Random picks tried before scanning the slots for a live backend. */
#define SVC_PROBES 4

#define BACKEND_STATIC 0
#define BACKEND_PROVIDER 1

#define DROP_REGISTRY 0
#define DROP_LISTENERS 1
#define DROP_PEERS 2
#define DROP_MAX 3

struct frontend_key {
	__u32 addr[4];
	__u16 port;
	__u8 protocol;
	__u8 pad;
};

struct frontend {
	__u32 service_id;
};

struct backend_key {
	__u32 service_id;
	__u32 index;
};

/* A backend slot. A static backend is addr:port. A provider backend is an
 * attached container (cgroup_id) that provides the service on port; its
 * address comes from the registry index, and it is live only while that
 * index has an entry. */
struct backend {
	__u64 cgroup_id;
	__u32 addr[4];
	__u16 port;
	__u8 kind;
	__u8 protocol;
	__u32 pad;
};

struct listener_key {
	__u64 cgroup_id;
	__u16 port;
	__u8 protocol;
	__u8 family; /* 4: IPv4 or v4-mapped, 6: IPv6 */
	__u32 pad;
};

/* refs counts the sockets bound to the same key (SO_REUSEPORT). addr is
 * the address to connect to: the bound one, or loopback for a wildcard. */
struct listener {
	__u32 addr[4];
	__u32 refs;
	__u32 pad;
};

/* One bound socket of an attached container, keyed by socket cookie. */
struct registration {
	__u64 cgroup_id;
	__u64 bound_ns; /* CLOCK_BOOTTIME */
	__u32 addr[4];
	__u16 port;
	__u8 protocol;
	__u8 family;
	__u32 pad;
};

/* A translated connected socket: what it dialled and where it went. */
struct peer {
	__u32 frontend[4];
	__u32 backend[4];
	__u16 frontend_port;
	__u16 backend_port;
	__u32 pad;
};

/* Unconnected (and connected) UDP: replies from backend to this socket
 * appear to come from the frontend. */
struct udp_peer_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct udp_peer {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

struct svc_name {
	char name[SVC_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SVC_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend_key);
	__type(value, struct frontend);
} svc_frontends SEC(".maps");

/* Service id -> number of backend slots. An array, so the lookup on the
 * connect path costs no hashing. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SVC_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} svc_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SVC_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend);
} svc_backends SEC(".maps");

/* Service name -> id. Only the control plane reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SVC_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_name);
	__type(value, __u32);
} svc_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SVC_MAX_REGISTRY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct registration);
} svc_registry SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SVC_MAX_REGISTRY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct listener_key);
	__type(value, struct listener);
} svc_listeners SEC(".maps");

/* LRU: entries of sockets closed after their attachment went are never
 * released by sock_release; the LRU ages them out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SVC_MAX_PEERS);
	__type(key, __u64);
	__type(value, struct peer);
} svc_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SVC_MAX_PEERS);
	__type(key, struct udp_peer_key);
	__type(value, struct udp_peer);
} svc_udp_peers SEC(".maps");

/* Counters of updates that failed because a map was full, so the operator
 * sees them (portcullisctl ports, service show) instead of silent drops. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} svc_drops SEC(".maps");

static __always_inline void count_drop(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&svc_drops, &which);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void copy6(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* ---- port registry ---- */

static __always_inline void register_socket(__u64 cookie, struct bpf_sock *sk, __u32 addr[4],
					    __u8 family)
{
	struct registration reg = {};
	__u64 cgroup_id;
	struct listener_key lk = {};
	struct listener *l, nl = {};
	long err;

	if (!current_policy(&cgroup_id))
		return;
	/* Once per socket: a TCP socket can listen again after a shutdown,
	 * and nested attachments run the hook twice. */
	if (bpf_map_lookup_elem(&svc_registry, &cookie))
		return;
	reg.cgroup_id = cgroup_id;
	reg.bound_ns = bpf_ktime_get_boot_ns();
	copy6(reg.addr, addr);
	reg.port = sk->src_port;
	reg.protocol = sk->protocol;
	reg.family = family;
	if (bpf_map_update_elem(&svc_registry, &cookie, &reg, BPF_ANY)) {
		count_drop(DROP_REGISTRY);
		return;
	}

	lk.cgroup_id = cgroup_id;
	lk.port = reg.port;
	lk.protocol = reg.protocol;
	lk.family = family;
	l = bpf_map_lookup_elem(&svc_listeners, &lk);
	if (l) {
		__sync_fetch_and_add(&l->refs, 1);
		return;
	}
	/* A wildcard listener is reached through loopback (the client must
	 * share its network namespace). */
	copy6(nl.addr, addr);
	if (family == 4 && addr[3] == 0)
		nl.addr[3] = bpf_htonl(0x7f000001);
	else if (family == 6 && is_any6(addr))
		nl.addr[3] = bpf_htonl(1);
	nl.refs = 1;
	err = bpf_map_update_elem(&svc_listeners, &lk, &nl, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another socket won the race */) {
		l = bpf_map_lookup_elem(&svc_listeners, &lk);
		if (l)
			__sync_fetch_and_add(&l->refs, 1);
	} else if (err) {
		count_drop(DROP_LISTENERS);
	}
}

/* post_bind runs after bind(2) gave the socket its address and port (not
 * after binds done by bpf_bind(), i.e. our own source pinning). */
SEC("cgroup/post_bind4")
int post_bind4(struct bpf_sock *sk)
{
	__u32 addr[4] = {0, 0, bpf_htonl(0x0000ffff), sk->src_ip4};

	if (sk->protocol == IPPROTO_UDP)
		register_socket(bpf_get_socket_cookie(sk), sk, addr, 4);
	return SYSCALL_ALLOW;
}

SEC("cgroup/post_bind6")
int post_bind6(struct bpf_sock *sk)
{
	__u32 addr[4];

	if (sk->protocol != IPPROTO_UDP)
		return SYSCALL_ALLOW;
	addr[0] = sk->src_ip6[0];
	addr[1] = sk->src_ip6[1];
	addr[2] = sk->src_ip6[2];
	addr[3] = sk->src_ip6[3];
	register_socket(bpf_get_socket_cookie(sk), sk, addr, is_v4mapped(addr) ? 4 : 6);
	return SYSCALL_ALLOW;
}

/* A TCP socket is registered when it starts listening (the callback runs
 * for every listen(2), unasked, in the listening task). Part of the one
 * sockops program (portcullis.c). */
static __always_inline void services_sockops(struct bpf_sock_ops *ops)
{
	struct bpf_sock *sk;
	__u32 addr[4] = {};

	if (ops->op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return;
	sk = ops->sk;
	if (!sk)
		return;
	if (sk->family == AF_INET) {
		addr[2] = bpf_htonl(0x0000ffff);
		addr[3] = sk->src_ip4;
	} else {
		addr[0] = sk->src_ip6[0];
		addr[1] = sk->src_ip6[1];
		addr[2] = sk->src_ip6[2];
		addr[3] = sk->src_ip6[3];
	}
	register_socket(bpf_get_socket_cookie(ops), sk, addr, is_v4mapped(addr) ? 4 : 6);
}

/* What a closed socket leaves in the services' maps: its reverse
 * translation and its registration. Part of the one cgroup/sock_release
 * program (portcullis.c). Lookups first: most sockets have neither, and a
 * lookup takes no lock where a delete does. */
static __always_inline void services_sock_release(__u64 cookie)
{
	struct registration *reg;
	struct listener_key lk = {};
	struct listener *l;

	if (bpf_map_lookup_elem(&svc_peers, &cookie))
		bpf_map_delete_elem(&svc_peers, &cookie);
	reg = bpf_map_lookup_elem(&svc_registry, &cookie);
	if (!reg)
		return;
	lk.cgroup_id = reg->cgroup_id;
	lk.port = reg->port;
	lk.protocol = reg->protocol;
	lk.family = reg->family;
	l = bpf_map_lookup_elem(&svc_listeners, &lk);
	if (l) {
		/* No fetch atomics at this CPU level; a bind racing this
		 * release on the same key at the same instant can lose its
		 * index entry (the registry still lists it). */
		__sync_fetch_and_add(&l->refs, -1);
		if ((int)l->refs <= 0)
			bpf_map_delete_elem(&svc_listeners, &lk);
	}
	bpf_map_delete_elem(&svc_registry, &cookie);
}

/* ---- resolution ---- */

struct pick {
	__u32 service_id;
	__u32 count;
	__u32 start;
	__u8 family; /* 4: only IPv4 backends; 6: IPv6 preferred, IPv4 too */
	__u8 protocol;
	bool found;
	__u16 port;
	__u32 addr[4];
};

/* Is slot index of the service live for this family, and where is it? */
static __always_inline bool backend_live(struct pick *pk, __u32 index)
{
	struct backend_key key = {.service_id = pk->service_id, .index = index};
	struct backend *b = bpf_map_lookup_elem(&svc_backends, &key);
	struct listener_key lk = {};
	struct listener *l;

	if (!b || b->protocol != pk->protocol)
		return false;
	if (b->kind == BACKEND_STATIC) {
		if (pk->family == 4 && !is_v4mapped(b->addr))
			return false;
		copy6(pk->addr, b->addr);
		pk->port = b->port;
		return true;
	}
	lk.cgroup_id = b->cgroup_id;
	lk.port = b->port;
	lk.protocol = b->protocol;
	lk.family = pk->family;
	l = bpf_map_lookup_elem(&svc_listeners, &lk);
	if (!l && pk->family == 6) {
		lk.family = 4;
		l = bpf_map_lookup_elem(&svc_listeners, &lk);
	}
	if (!l)
		return false;
	copy6(pk->addr, l->addr);
	pk->port = b->port;
	return true;
}

static long scan_slot(__u32 i, void *data)
{
	struct pick *pk = data;
	__u32 index = pk->start + i;

	if (index >= pk->count)
		index -= pk->count;
	if (backend_live(pk, index)) {
		pk->found = true;
		return 1;
	}
	return 0;
}

/* Resolve a destination. Returns 0 when it is not a frontend, 1 with
 * pk->addr/port set to a live backend, -1 when the frontend has none.
 *
 * A few uniform random picks find a live backend at once when most are
 * live; otherwise a scan from a random slot finds one if any exists, so a
 * refusal always means "no live backend". */
static __always_inline int resolve(struct pick *pk, const __u32 dst[4], __u16 port,
				   __u8 protocol)
{
	struct frontend_key fk = {.port = port, .protocol = protocol};
	struct frontend *fe;
	__u32 *count;

	pk->protocol = protocol;
	copy6(fk.addr, dst);
	fe = bpf_map_lookup_elem(&svc_frontends, &fk);
	if (!fe)
		return 0;
	pk->service_id = fe->service_id;
	count = bpf_map_lookup_elem(&svc_counts, &pk->service_id);
	if (!count || *count == 0)
		return -1;
	pk->count = *count;
	if (pk->count > SVC_PROBES) {
		for (int i = 0; i < SVC_PROBES; i++) {
			if (backend_live(pk, bpf_get_prandom_u32() % pk->count))
				return 1;
		}
	}
	pk->start = bpf_get_prandom_u32() % pk->count;
	bpf_loop(pk->count, scan_slot, pk, 0);
	return pk->found ? 1 : -1;
}

/* Fail the syscall with ECONNREFUSED rather than the default EPERM. */
static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return SYSCALL_DENY;
}

static __always_inline void remember_udp_peer(__u64 cookie, const struct pick *pk,
					      const __u32 dst[4], __u16 port)
{
	struct udp_peer_key key = {.cookie = cookie, .port = pk->port};
	struct udp_peer val = {.port = port};
	struct udp_peer *have;

	copy6(key.addr, pk->addr);
	have = bpf_map_lookup_elem(&svc_udp_peers, &key);
	/* sendmsg runs per datagram: write only what changed. */
	if (have && have->port == port && equal6(have->addr, dst))
		return;
	copy6(val.addr, dst);
	if (bpf_map_update_elem(&svc_udp_peers, &key, &val, BPF_ANY))
		count_drop(DROP_PEERS);
}

static __always_inline void remember_peer(struct bpf_sock_addr *ctx, const struct pick *pk,
					  const __u32 dst[4], __u16 port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct peer p = {.frontend_port = port, .backend_port = pk->port};

	copy6(p.frontend, dst);
	copy6(p.backend, pk->addr);
	if (bpf_map_update_elem(&svc_peers, &cookie, &p, BPF_ANY))
		count_drop(DROP_PEERS);
	if (ctx->protocol == IPPROTO_UDP)
		remember_udp_peer(cookie, pk, dst, port);
}

/* connect4/connect6 and sendmsg4/sendmsg6 call these first. They return
 * SYSCALL_ALLOW (destination rewritten or not a frontend) or SYSCALL_DENY
 * with ECONNREFUSED set. */
static __always_inline int service_connect4(struct bpf_sock_addr *ctx, bool sendmsg)
{
	__u32 dst[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
	__u16 port = bpf_ntohs(ctx->user_port);
	struct pick pk = {.family = 4};
	int r = resolve(&pk, dst, port, ctx->protocol);

	if (r == 0)
		return SYSCALL_ALLOW;
	if (r < 0)
		return refuse();
	ctx->user_ip4 = pk.addr[3];
	ctx->user_port = bpf_htons(pk.port);
	if (sendmsg)
		remember_udp_peer(bpf_get_socket_cookie(ctx), &pk, dst, port);
	else
		remember_peer(ctx, &pk, dst, port);
	return SYSCALL_ALLOW;
}

static __always_inline int service_connect6(struct bpf_sock_addr *ctx, bool sendmsg)
{
	__u32 dst[4];
	__u16 port = bpf_ntohs(ctx->user_port);
	struct pick pk = {};
	int r;

	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	/* A v4-mapped destination gets an IPv4 backend, as the application
	 * dialled IPv4. */
	pk.family = is_v4mapped(dst) ? 4 : 6;
	r = resolve(&pk, dst, port, ctx->protocol);
	if (r == 0)
		return SYSCALL_ALLOW;
	if (r < 0)
		return refuse();
	ctx->user_ip6[0] = pk.addr[0];
	ctx->user_ip6[1] = pk.addr[1];
	ctx->user_ip6[2] = pk.addr[2];
	ctx->user_ip6[3] = pk.addr[3];
	ctx->user_port = bpf_htons(pk.port);
	if (sendmsg)
		remember_udp_peer(bpf_get_socket_cookie(ctx), &pk, dst, port);
	else
		remember_peer(ctx, &pk, dst, port);
	return SYSCALL_ALLOW;
}

/* ---- reverse translation ---- */

/* The peer of a translated socket is shown as the frontend, as long as the
 * socket is still connected to the backend it was sent to. */
static __always_inline struct peer *translated_peer(struct bpf_sock_addr *ctx,
						    const __u32 now[4])
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct peer *p = bpf_map_lookup_elem(&svc_peers, &cookie);

	if (!p || p->backend_port != bpf_ntohs(ctx->user_port) || !equal6(p->backend, now))
		return NULL;
	return p;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	__u32 now[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
	struct peer *p = translated_peer(ctx, now);

	if (p) {
		ctx->user_ip4 = p->frontend[3];
		ctx->user_port = bpf_htons(p->frontend_port);
	}
	return SYSCALL_ALLOW;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	__u32 now[4];
	struct peer *p;

	now[0] = ctx->user_ip6[0];
	now[1] = ctx->user_ip6[1];
	now[2] = ctx->user_ip6[2];
	now[3] = ctx->user_ip6[3];
	p = translated_peer(ctx, now);
	if (p) {
		ctx->user_ip6[0] = p->frontend[0];
		ctx->user_ip6[1] = p->frontend[1];
		ctx->user_ip6[2] = p->frontend[2];
		ctx->user_ip6[3] = p->frontend[3];
		ctx->user_port = bpf_htons(p->frontend_port);
	}
	return SYSCALL_ALLOW;
}

static __always_inline struct udp_peer *udp_reply_source(struct bpf_sock_addr *ctx,
							 const __u32 from[4])
{
	struct udp_peer_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = bpf_ntohs(ctx->user_port),
	};

	copy6(key.addr, from);
	return bpf_map_lookup_elem(&svc_udp_peers, &key);
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	__u32 from[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
	struct udp_peer *fe = udp_reply_source(ctx, from);

	if (fe) {
		ctx->user_ip4 = fe->addr[3];
		ctx->user_port = bpf_htons(fe->port);
	}
	return SYSCALL_ALLOW;
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	__u32 from[4];
	struct udp_peer *fe;

	from[0] = ctx->user_ip6[0];
	from[1] = ctx->user_ip6[1];
	from[2] = ctx->user_ip6[2];
	from[3] = ctx->user_ip6[3];
	fe = udp_reply_source(ctx, from);
	if (fe) {
		ctx->user_ip6[0] = fe->addr[0];
		ctx->user_ip6[1] = fe->addr[1];
		ctx->user_ip6[2] = fe->addr[2];
		ctx->user_ip6[3] = fe->addr[3];
		ctx->user_port = bpf_htons(fe->port);
	}
	return SYSCALL_ALLOW;
}
