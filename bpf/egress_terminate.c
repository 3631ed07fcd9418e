// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* `portcullisctl policy set --terminate`: iter/tcp and iter/udp programs
 * that destroy the sockets of one container whose peer its egress rules
 * deny now. The rules are read from the pinned egress maps (shared through
 * MapReplacements), so "denied" means exactly what connect(2) would answer
 * after the change. Output is struct term_event, the format of
 * bpf/terminate.c, so pkg/terminate reads and reports it the same way.
 */
#include "sockiter.h"
#include "egress.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The container: its cgroup (a socket belongs to it when the socket's
 * cgroup is this one or below it; 0 for a container keyed by its network
 * namespace, whose sockets are all those of the namespace the iterator
 * runs in) and the key of its egress rules. */
volatile const __u64 target_cgroup = 0;
volatile const __u64 target_owner = 0;
volatile const __u8 dry_run = 0;

/* The pinned port registry of bpf/services.h (MapReplacements; declared as
 * there): the ports the container's servers are bound to. A TCP socket on
 * such a local port was accepted by one of them, so it is an incoming
 * connection that egress rules do not judge. */
struct listener_key {
	__u64 cgroup_id;
	__u16 port;
	__u8 protocol;
	__u8 family; /* 4: IPv4 or v4-mapped, 6: IPv6 */
	__u32 pad;
};

struct listener {
	__u32 addr[4];
	__u32 refs;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct listener_key);
	__type(value, struct listener);
} svc_listeners SEC(".maps");

static __always_inline bool accepted(__u16 local_port)
{
	struct listener_key key = {.cgroup_id = target_owner, .port = local_port, .protocol = IPPROTO_TCP, .family = 4};

	if (bpf_map_lookup_elem(&svc_listeners, &key))
		return true;
	key.family = 6; /* a dual-stack listener */
	return bpf_map_lookup_elem(&svc_listeners, &key) != NULL;
}

/* in_target: the socket's cgroup is the container's or nested below it. */
static __always_inline bool in_target(struct sock *sk)
{
	struct cgroup *cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	int level;

	if (!cgrp)
		return false;
	level = BPF_CORE_READ(cgrp, level);
	for (int i = 0; i < MAX_CGROUP_DEPTH; i++) {
		struct cgroup *ancestor = NULL;

		if (level - i < 0)
			break;
		bpf_core_read(&ancestor, sizeof(ancestor), &cgrp->ancestors[level - i]);
		if (!ancestor)
			break;
		if (BPF_CORE_READ(ancestor, kn, id) == target_cgroup)
			return true;
	}
	return false;
}

static __always_inline void check(struct bpf_iter_meta *meta, struct sock_common *skc,
				  struct sock *sk, __u8 protocol)
{
	struct term_event ev = {.kind = TERM_EVENT_SOCKET, .protocol = protocol};

	term_socket(&ev, skc);
	if (egress_allowed(target_owner, ev.peer, ev.peer_port, protocol))
		return;
	if (protocol == IPPROTO_TCP && accepted(ev.local_port))
		return;
	if (target_cgroup && !in_target(sk))
		return;
	ev.cgroup_id = target_owner; /* the attachment's key: its counters */
	if (!dry_run && term_destroy(meta, &ev, skc))
		return;
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}

SEC("iter/tcp")
int denied_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sock *sk;

	if (!skc) {
		summary(ctx->meta, IPPROTO_TCP);
		return 0;
	}
	sk = tcp_with_peer(skc);
	if (sk)
		check(ctx->meta, skc, sk, IPPROTO_TCP);
	return 0;
}

SEC("iter/udp")
int denied_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (!sk) {
		summary(ctx->meta, IPPROTO_UDP);
		return 0;
	}
	if (udp_with_peer(sk))
		check(ctx->meta, &sk->__sk_common, sk, IPPROTO_UDP);
	return 0;
}
