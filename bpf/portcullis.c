// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* portcullis cgroup socket programs.
 *
 * These programs are loaded once and attached to every container's cgroup
 * v2. They find the container's policy by cgroup id and then act on the
 * sockaddr the process passed to bind(2), connect(2), sendmsg(2) and
 * getsockname(2). A process whose cgroup has no policy is left alone.
 */
#include "common.h"
#include "netns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Hash maps here and in services.h are not preallocated: an entry costs
 * memory only while it exists, and max_entries (set at load, see
 * docs/scale.md) is only a cap. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct policy);
} policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct portmap_key);
	__type(value, __u16);
} portmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct attachment_id);
	__type(value, struct record);
} attachments SEC(".maps");

/* The policy of the current task's cgroup. The fast path is a task in the
 * container's own cgroup; otherwise the task sits in a cgroup nested below
 * it, and the deepest ancestor with a policy wins. */
static __always_inline struct policy *cgroup_policy(__u64 *cgroup_id)
{
	__u64 id = current_cgroup_id();
	struct policy *p = bpf_map_lookup_elem(&policies, &id);
	struct policy *found = NULL;

	*cgroup_id = 0;
	if (p) {
		*cgroup_id = id;
		return p;
	}
	for (int level = 1; level < MAX_CGROUP_DEPTH; level++) {
		__u64 ancestor = bpf_get_current_ancestor_cgroup_id(level);

		if (ancestor == 0 || ancestor == id)
			break;
		p = bpf_map_lookup_elem(&policies, &ancestor);
		if (p) {
			found = p;
			*cgroup_id = ancestor;
		}
	}
	return found;
}

/* Find the policy of the current task's container and the key its
 * per-container map entries use: the cgroup policy in the per-cgroup copy;
 * in the copy on the common ancestor (netns.h), the network namespace's,
 * unless a cgroup policy applies (then the per-cgroup copy acts). A host
 * task pays one lookup there. */
static __always_inline struct policy *current_policy(__u64 *key)
{
	struct policy *p;
	__u64 cgroup_id;

	if (!netns_copy)
		return cgroup_policy(key);
	*key = current_netns_key();
	p = bpf_map_lookup_elem(&policies, key);
	if (!p || cgroup_policy(&cgroup_id)) {
		*key = 0;
		return NULL;
	}
	return p;
}

static __always_inline bool is_loopback4(__u32 ip)
{
	return (bpf_ntohl(ip) >> 24) == 127;
}

static __always_inline bool is_v4mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool is_any6(const __u32 ip6[4])
{
	return (ip6[0] | ip6[1] | ip6[2] | ip6[3]) == 0;
}

static __always_inline bool is_loopback6(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == bpf_htonl(1);
}

static __always_inline bool equal6(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

#include "services.h"
#include "publish.h"
#include "egress.h"
#include "limits.h"
#include "isolation.h"
#include "counters.h"
#include "accounting.h"
#include "marks.h"

static __always_inline __u16 portmap_lookup(__u64 cgroup_id, __u16 port, __u8 protocol,
					    __u8 direction)
{
	struct portmap_key key = {
		.cgroup_id = cgroup_id,
		.port = port,
		.protocol = protocol,
		.direction = direction,
	};
	__u16 *mapped = bpf_map_lookup_elem(&portmaps, &key);

	return mapped ? *mapped : 0;
}

static __always_inline bool port_allowed(const struct policy *p, __u16 port)
{
	for (int i = 0; i < MAX_PORT_RANGES; i++) {
		if (i >= p->nr_ranges)
			break;
		if (port >= p->ranges[i].first && port <= p->ranges[i].last)
			return true;
	}
	return false;
}

/* Port part of bind: remap a container port to its host port, then enforce
 * the allow-list. Port 0 asks the kernel for an ephemeral port and stays
 * allowed. A host port that is the target of a mapping is allowed too, so
 * the program gives the same answer when it runs twice (attachments on
 * nested cgroups both run). */
static __always_inline int bind_port(struct bpf_sock_addr *ctx, __u64 cgroup_id,
				     const struct policy *p)
{
	__u16 port = bpf_ntohs(ctx->user_port);
	__u8 protocol = ctx->protocol;
	__u16 host_port;

	if (port == 0)
		return SYSCALL_ALLOW;
	host_port = portmap_lookup(cgroup_id, port, protocol, PORTMAP_TO_HOST);
	if (host_port) {
		ctx->user_port = bpf_htons(host_port);
		count_decision(cgroup_id, DECISION_BIND_REMAPPED);
		return SYSCALL_ALLOW;
	}
	if (!(p->flags & POLICY_RESTRICT_PORTS))
		return SYSCALL_ALLOW;
	if (port_allowed(p, port) ||
	    portmap_lookup(cgroup_id, port, protocol, PORTMAP_TO_CONTAINER))
		return SYSCALL_ALLOW;
	count_decision(cgroup_id, DECISION_BIND_REFUSED_PORT);
	return SYSCALL_DENY;
}

static __always_inline int refuse_bind(__u64 cgroup_id)
{
	count_decision(cgroup_id, DECISION_BIND_REFUSED_ADDRESS);
	return SYSCALL_DENY;
}

/* Address part of an IPv4 bind (also used for v4-mapped IPv6). Returns the
 * address to bind, or 0 with *deny set. */
static __always_inline __u32 bind_addr4(const struct policy *p, __u32 ip, bool *deny)
{
	*deny = false;
	if (!(p->flags & (POLICY_HAS_ADDR4 | POLICY_HAS_ADDR6)))
		return ip;
	if (ip == 0)
		return (p->flags & POLICY_HAS_ADDR4) ? p->addr4 : 0;
	if (is_loopback4(ip) || ((p->flags & POLICY_HAS_ADDR4) && ip == p->addr4))
		return ip;
	*deny = true;
	return 0;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	bool deny;
	__u32 ip;

	if (!p)
		return SYSCALL_ALLOW;
	ip = bind_addr4(p, ctx->user_ip4, &deny);
	if (deny)
		return refuse_bind(cgroup_id);
	if (ip != ctx->user_ip4)
		ctx->user_ip4 = ip;
	apply_dscp(ctx, p);
	return bind_port(ctx, cgroup_id, p) && isolation_bind4(ctx, cgroup_id, p);
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	__u32 ip6[4];
	bool deny;

	if (!p)
		return SYSCALL_ALLOW;
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];

	if (is_v4mapped(ip6)) {
		/* A dual-stack socket binding a v4-mapped address is an
		 * IPv4 bind and gets the IPv4 rules. */
		__u32 ip = bind_addr4(p, ip6[3], &deny);

		if (deny)
			return refuse_bind(cgroup_id);
		if (ip != ip6[3])
			ctx->user_ip6[3] = ip;
	} else if (is_any6(ip6)) {
		/* "::" becomes the container's IPv6 address; a container with
		 * only an IPv4 address gets its v4-mapped form, so a dual-stack
		 * listener (the Go default) is pinned too. */
		if (p->flags & POLICY_HAS_ADDR6) {
			ctx->user_ip6[0] = p->addr6[0];
			ctx->user_ip6[1] = p->addr6[1];
			ctx->user_ip6[2] = p->addr6[2];
			ctx->user_ip6[3] = p->addr6[3];
		} else if ((p->flags & POLICY_HAS_ADDR4) && !isolation_v6only(ctx)) {
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = p->addr4;
		}
	} else if ((p->flags & (POLICY_HAS_ADDR4 | POLICY_HAS_ADDR6)) && !is_loopback6(ip6) &&
		   !((p->flags & POLICY_HAS_ADDR6) && equal6(ip6, p->addr6))) {
		return refuse_bind(cgroup_id);
	}
	apply_dscp(ctx, p);
	return bind_port(ctx, cgroup_id, p) && isolation_bind6(ctx, cgroup_id, p);
}

/* Bind the local end of an outgoing socket to the container's address with
 * port 0, which gives IP_BIND_ADDRESS_NO_PORT semantics: the port is chosen
 * at connect time from the full 4-tuple. A socket the application bound
 * itself is left as it is. A loopback container address can only reach
 * loopback destinations, so it is not forced on others. */
static __always_inline void pin_source4(struct bpf_sock_addr *ctx, const struct policy *p,
					__u32 dst)
{
	struct bpf_sock *sk = ctx->sk;
	struct sockaddr_in sin = {
		.sin_family = AF_INET,
		.sin_addr.s_addr = p->addr4,
	};

	if (!sk || sk->src_ip4 != 0 || sk->src_port != 0)
		return;
	if (is_loopback4(p->addr4) && !is_loopback4(dst))
		return;
	bpf_bind(ctx, (struct sockaddr *)&sin, sizeof(sin));
}

static __always_inline void pin_source6(struct bpf_sock_addr *ctx, const struct policy *p,
					const __u32 dst[4])
{
	struct bpf_sock *sk = ctx->sk;
	struct sockaddr_in6 sin6 = {
		.sin6_family = AF_INET6,
	};

	if (!sk || sk->src_port != 0)
		return;
	if (sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3])
		return;
	if (is_v4mapped(dst)) {
		if (!(p->flags & POLICY_HAS_ADDR4))
			return;
		if (is_loopback4(p->addr4) && !is_loopback4(dst[3]))
			return;
		sin6.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0x0000ffff);
		sin6.sin6_addr.in6_u.u6_addr32[3] = p->addr4;
	} else {
		if (!(p->flags & POLICY_HAS_ADDR6))
			return;
		if (is_loopback6(p->addr6) && !is_loopback6(dst))
			return;
		sin6.sin6_addr.in6_u.u6_addr32[0] = p->addr6[0];
		sin6.sin6_addr.in6_u.u6_addr32[1] = p->addr6[1];
		sin6.sin6_addr.in6_u.u6_addr32[2] = p->addr6[2];
		sin6.sin6_addr.in6_u.u6_addr32[3] = p->addr6[3];
	}
	bpf_bind(ctx, (struct sockaddr *)&sin6, sizeof(sin6));
}

static __always_inline int policy_connect4(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	__u32 dst, port;

	if (!p)
		return SYSCALL_ALLOW;
	/* Services first: the source is pinned for the real destination. */
	dst = ctx->user_ip4;
	port = ctx->user_port;
	if (service_connect4(ctx, false) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_NO_BACKEND);
		return SYSCALL_DENY;
	}
	if (ctx->user_ip4 != dst || ctx->user_port != port)
		count_decision(cgroup_id, DECISION_CONNECT_TRANSLATED);
	if (egress_check(ctx, cgroup_id, p, false) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_EGRESS);
		return SYSCALL_DENY;
	}
	if (limits_connect(ctx, cgroup_id, p, false) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_CAP);
		return SYSCALL_DENY;
	}
	apply_dscp(ctx, p);
	if (p->flags & POLICY_HAS_ADDR4)
		pin_source4(ctx, p, ctx->user_ip4);
	return SYSCALL_ALLOW;
}

static __always_inline int policy_connect6(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	__u32 dst[4], port;

	if (!p)
		return SYSCALL_ALLOW;
	port = ctx->user_port;
	dst[3] = ctx->user_ip6[3];
	if (service_connect6(ctx, false) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_NO_BACKEND);
		return SYSCALL_DENY;
	}
	/* A translation always changes the port or the last word. */
	if (ctx->user_ip6[3] != dst[3] || ctx->user_port != port)
		count_decision(cgroup_id, DECISION_CONNECT_TRANSLATED);
	if (egress_check(ctx, cgroup_id, p, true) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_EGRESS);
		return SYSCALL_DENY;
	}
	if (limits_connect(ctx, cgroup_id, p, true) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_CAP);
		return SYSCALL_DENY;
	}
	apply_dscp(ctx, p);
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	pin_source6(ctx, p, dst);
	return SYSCALL_ALLOW;
}

/* One program per hook: each program a cgroup runs costs its dispatch
 * (and, for sock_release, a socket cookie) on top of what it does, on
 * every socket of the container (docs/performance.md). So the capabilities'
 * parts of a hook are functions in their headers, called from here in a
 * fixed order. */

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	if (policy_connect4(ctx) == SYSCALL_DENY)
		return SYSCALL_DENY;
	return publish_connect4(ctx);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	if (policy_connect6(ctx) == SYSCALL_DENY)
		return SYSCALL_DENY;
	return publish_connect6(ctx);
}

static __always_inline int policy_sock_create(struct bpf_sock *sk)
{
	__u64 key;
	struct policy *p = current_policy(&key);

	if (!p)
		return SYSCALL_ALLOW;
	if (isolation_socket_denied(sk, p))
		return SYSCALL_DENY;
	marks_sock_create(sk, key, p);
	return SYSCALL_ALLOW;
}

SEC("cgroup/sock_create")
int sock_create(struct bpf_sock *sk)
{
	return policy_sock_create(sk);
}

/* sock_create for an attachment whose policy has no mark, priority or
 * DSCP: pkg/state links it in sock_create's place (the link keeps
 * sock_create's name) and back before a policy change adds one. Then only
 * raw and ICMP datagram sockets need the policy, and a TCP or UDP socket
 * costs no lookup (about 90 ns, docs/performance.md). Nested attachments
 * stay right: each link runs its own attachment's variant, and the full
 * one applies the deepest policy, as before. */
SEC("cgroup/sock_create")
int sock_create_unmarked(struct bpf_sock *sk)
{
	if (netns_copy || isolation_checks_socket(sk))
		return policy_sock_create(sk);
	return SYSCALL_ALLOW;
}

/* Not the task's policy: a socket may be closed by another process.
 * Everything a socket can leave behind (its registration, reverse
 * translation, connection slot) is keyed by its cookie, which the kernel
 * makes only when first asked: a socket without one has nothing to give
 * back, and its release costs no lookup. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *sk)
{
	__u64 cookie;

	if (!sock_cookie_made(sk))
		return SYSCALL_ALLOW;
	cookie = bpf_get_socket_cookie(sk);
	services_sock_release(cookie);
	limits_release(cookie);
	return SYSCALL_ALLOW;
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *ops)
{
	limits_sockops(ops);
	marks_sockops(ops);
	services_sockops(ops);
	return 1;
}

/* Runs for every setsockopt(2) of the container: an option neither marks
 * nor isolation guards costs two compares. */
SEC("cgroup/setsockopt")
int setsockopt(struct bpf_sockopt *ctx)
{
	int verdict = SYSCALL_ALLOW;
	__u32 flag = marks_option(ctx->level, ctx->optname);
	struct policy *p;
	__u64 key;

	if (flag) {
		p = current_policy(&key);
		if (p && (p->flags & flag))
			verdict = SYSCALL_DENY;
	} else if (isolation_option(ctx)) {
		verdict = isolation_setsockopt(ctx);
	}
	/* The program never changes the value: 0 tells the kernel to use the
	 * caller's buffer as it is (beyond a page the program would see only
	 * part of it, and any other length would be taken as a new value). */
	ctx->optlen = 0;
	return verdict;
}

/* Unconnected UDP: each datagram's source is set to the container's
 * address unless the socket is bound or the application chose a source. */
static __always_inline int policy_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	struct bpf_sock *sk = ctx->sk;

	if (!p)
		return SYSCALL_ALLOW;
	if (service_connect4(ctx, true) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_NO_BACKEND);
		return SYSCALL_DENY;
	}
	if (!isolation_source4(ctx, cgroup_id, p))
		return SYSCALL_DENY;
	if (egress_check(ctx, cgroup_id, p, false) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_EGRESS);
		return SYSCALL_DENY;
	}
	apply_dscp(ctx, p);
	if (!(p->flags & POLICY_HAS_ADDR4) || !sk)
		return SYSCALL_ALLOW;
	if (ctx->msg_src_ip4 != 0 || sk->src_ip4 != 0)
		return SYSCALL_ALLOW;
	if (is_loopback4(p->addr4) && !is_loopback4(ctx->user_ip4))
		return SYSCALL_ALLOW;
	ctx->msg_src_ip4 = p->addr4;
	count_decision(cgroup_id, DECISION_UDP_SOURCE_REWRITTEN);
	return SYSCALL_ALLOW;
}

static __always_inline int policy_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	struct bpf_sock *sk = ctx->sk;
	__u32 dst[4];

	if (!p)
		return SYSCALL_ALLOW;
	if (service_connect6(ctx, true) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_NO_BACKEND);
		return SYSCALL_DENY;
	}
	if (!isolation_source6(ctx, cgroup_id, p))
		return SYSCALL_DENY;
	if (egress_check(ctx, cgroup_id, p, true) == SYSCALL_DENY) {
		count_decision(cgroup_id, DECISION_CONNECT_REFUSED_EGRESS);
		return SYSCALL_DENY;
	}
	apply_dscp(ctx, p);
	if (!(p->flags & POLICY_HAS_ADDR6) || !sk)
		return SYSCALL_ALLOW;
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	if (is_v4mapped(dst))
		return SYSCALL_ALLOW;
	if (ctx->msg_src_ip6[0] | ctx->msg_src_ip6[1] | ctx->msg_src_ip6[2] | ctx->msg_src_ip6[3])
		return SYSCALL_ALLOW;
	if (sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3])
		return SYSCALL_ALLOW;
	if (is_loopback6(p->addr6) && !is_loopback6(dst))
		return SYSCALL_ALLOW;
	ctx->msg_src_ip6[0] = p->addr6[0];
	ctx->msg_src_ip6[1] = p->addr6[1];
	ctx->msg_src_ip6[2] = p->addr6[2];
	ctx->msg_src_ip6[3] = p->addr6[3];
	count_decision(cgroup_id, DECISION_UDP_SOURCE_REWRITTEN);
	return SYSCALL_ALLOW;
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	if (policy_sendmsg4(ctx) == SYSCALL_DENY)
		return SYSCALL_DENY;
	return publish_sendmsg4(ctx);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	if (policy_sendmsg6(ctx) == SYSCALL_DENY)
		return SYSCALL_DENY;
	return publish_sendmsg6(ctx);
}

/* getsockname(2) shows the port the application asked for, not the host
 * port bind() remapped it to. */
static __always_inline void unmap_port(struct bpf_sock_addr *ctx)
{
	__u64 cgroup_id;
	struct policy *p = current_policy(&cgroup_id);
	__u16 container_port;

	if (!p)
		return;
	container_port = portmap_lookup(cgroup_id, bpf_ntohs(ctx->user_port), ctx->protocol,
					PORTMAP_TO_CONTAINER);
	if (container_port)
		ctx->user_port = bpf_htons(container_port);
}

SEC("cgroup/getsockname4")
int getsockname4(struct bpf_sock_addr *ctx)
{
	unmap_port(ctx);
	return SYSCALL_ALLOW;
}

SEC("cgroup/getsockname6")
int getsockname6(struct bpf_sock_addr *ctx)
{
	unmap_port(ctx);
	return SYSCALL_ALLOW;
}
