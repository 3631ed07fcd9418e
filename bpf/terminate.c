// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket termination: iter/tcp and iter/udp programs that find the client
 * sockets of attached containers still connected to a backend that went
 * away, and destroy them with the bpf_sock_destroy kfunc (kernel 6.5+).
 *
 * A socket iterator walks the sockets of one network namespace (the one of
 * the process that created the iterator), so pkg/terminate runs these
 * programs once per namespace that holds attached containers. For every
 * matching socket it lists (a dry run) or fails to destroy, the program
 * writes one struct term_event to the iterator's output; after the last
 * socket it writes a summary with the number of sockets it scanned and
 * destroyed (bpf/sockiter.h says why destroyed sockets get no event).
 *
 * A socket matches when
 *   - its peer address and port are in `targets` (or the address with port
 *     0, meaning any port), for its protocol,
 *   - it is a TCP socket with a peer (established, connecting, closing: not
 *     listening, not closed) or a connected UDP socket,
 *   - it belongs to an attached container: the attachment recorded in its
 *     storage (owners.h) is still there, or its cgroup or one of its
 *     ancestors has a policy. Host processes are never touched.
 */
#include "sockiter.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The pinned policies map of portcullis.c, shared through MapReplacements:
 * its keys are the attached cgroups. Must be declared exactly as there. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct policy);
} policies SEC(".maps");

/* What to terminate: one backend is an address, a port and a protocol. */
struct term_target {
	__u32 addr[4]; /* IPv6, or IPv4-mapped IPv6; network byte order */
	__u16 port;    /* network byte order; 0 matches any port */
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* What to do with a matching socket: the value of a target. The programs
 * are loaded once with the state and pinned, so a dry run is said per run
 * in the map rather than by a constant fixed at load. */
#define TERM_DESTROY 1
#define TERM_LIST 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct term_target);
	__type(value, __u8);
} targets SEC(".maps");

/* Keeps the type in BTF so bpf2go generates its Go mirror. */
const struct term_event *unused_term_event __attribute__((unused));

/* target_action returns what to do with the socket: TERM_DESTROY,
 * TERM_LIST, or 0 when its peer is no target. */
static __always_inline __u8 target_action(struct sock_common *skc, __u8 protocol)
{
	struct term_target key = {.protocol = protocol, .port = skc->skc_dport};
	__u8 *action;

	address_of(skc, true, key.addr);
	action = bpf_map_lookup_elem(&targets, &key);
	if (action)
		return *action;
	key.port = 0;
	action = bpf_map_lookup_elem(&targets, &key);
	return action ? *action : 0;
}

/* attached_cgroup returns the id of the socket's cgroup or of its deepest
 * ancestor that has a policy, or 0 when no container owns the socket. The
 * socket's cgroup v2 is recorded at socket creation. The ancestors array
 * is read with probe reads, since its index is not a constant. */
static __always_inline __u64 attached_cgroup(struct sock *sk)
{
	struct cgroup *cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	int level;

	if (!cgrp)
		return 0;
	level = BPF_CORE_READ(cgrp, level);
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup *ancestor = NULL;
		__u64 id;

		if (level - i < 0)
			break;
		bpf_core_read(&ancestor, sizeof(ancestor), &cgrp->ancestors[level - i]);
		if (!ancestor)
			break;
		id = BPF_CORE_READ(ancestor, kn, id);
		if (bpf_map_lookup_elem(&policies, &id))
			return id;
	}
	return 0;
}

/* owner_key returns the policy key of the attachment the socket belongs
 * to, or 0 when no container owns it: the key sock_create recorded in the
 * socket's storage (owners.h; the only way to a namespace-keyed
 * attachment, whose sockets live in any cgroup), while that attachment
 * still exists, else the socket's attached cgroup (a socket created
 * before the attachment). */
static __always_inline __u64 owner_key(struct sock *sk)
{
	struct sock_owner *o = bpf_sk_storage_get(&sock_owners, sk, 0, 0);

	if (o && bpf_map_lookup_elem(&policies, &o->key))
		return o->key;
	return attached_cgroup(sk);
}

static __always_inline void terminate(struct bpf_iter_meta *meta, struct sock_common *skc,
				      struct sock *sk, __u8 protocol)
{
	struct term_event ev = {.kind = TERM_EVENT_SOCKET, .protocol = protocol};
	__u8 action = target_action(skc, protocol);

	if (!action)
		return;
	ev.cgroup_id = owner_key(sk);
	if (!ev.cgroup_id)
		return;
	term_socket(&ev, skc);
	if (action == TERM_DESTROY && term_destroy(meta, &ev, skc))
		return;
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}

SEC("iter/tcp")
int terminate_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sock *sk;

	if (!skc) {
		summary(ctx->meta, IPPROTO_TCP);
		return 0;
	}
	sk = tcp_with_peer(skc);
	if (sk)
		terminate(ctx->meta, skc, sk, IPPROTO_TCP);
	return 0;
}

SEC("iter/udp")
int terminate_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (!sk) {
		summary(ctx->meta, IPPROTO_UDP);
		return 0;
	}
	if (udp_with_peer(sk))
		terminate(ctx->meta, &sk->__sk_common, sk, IPPROTO_UDP);
	return 0;
}
