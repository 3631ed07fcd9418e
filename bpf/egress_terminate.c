// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* `portcullisctl policy set --terminate`: iter/tcp and iter/udp programs
 * that destroy the sockets of one container whose peer its egress rules
 * deny now. The rules are read from the pinned egress maps (shared through
 * MapReplacements), so "denied" means exactly what connect(2) would answer
 * after the change. Output is struct term_event, the format of
 * bpf/terminate.c, so pkg/terminate reads and reports it the same way.
 */
#include "common.h"
#include <bpf/bpf_core_read.h>
#include "kernel.h"
#include "egress.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The container: its cgroup (a socket belongs to it when the socket's
 * cgroup is this one or below it) and the key of its egress rules. */
volatile const __u64 target_cgroup = 0;
volatile const __u64 target_owner = 0;
volatile const __u8 dry_run = 0;

/* Must stay identical to struct term_event in bpf/terminate.c. */
struct term_event {
	__u32 kind;
	__s32 result;
	__u32 peer[4];
	__u32 local[4];
	__u16 peer_port;
	__u16 local_port;
	__u8 protocol;
	__u8 state;
	__u16 pad;
	__u32 family;
	__u32 pad2;
	__u64 cgroup_id;
	__u64 scanned;
};

static __always_inline void sock_address(struct sock_common *skc, bool peer, __u32 out[4])
{
	if (skc->skc_family == AF_INET) {
		out[0] = 0;
		out[1] = 0;
		out[2] = bpf_htonl(0x0000ffff);
		out[3] = peer ? skc->skc_daddr : skc->skc_rcv_saddr;
		return;
	}
	for (int i = 0; i < 4; i++)
		out[i] = peer ? skc->skc_v6_daddr.in6_u.u6_addr32[i] : skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
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
	struct term_event ev = {.kind = 1, .protocol = protocol};

	sock_address(skc, true, ev.peer);
	ev.peer_port = bpf_ntohs(skc->skc_dport);
	if (egress_allowed(target_owner, ev.peer, ev.peer_port, protocol))
		return;
	if (!in_target(sk))
		return;
	ev.cgroup_id = target_cgroup;
	ev.family = skc->skc_family;
	ev.state = skc->skc_state;
	sock_address(skc, false, ev.local);
	ev.local_port = skc->skc_num;
	if (!dry_run)
		ev.result = bpf_sock_destroy(skc);
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}

static __always_inline void summary(struct bpf_iter_meta *meta, __u8 protocol)
{
	struct term_event ev = {.kind = 2, .protocol = protocol};

	ev.scanned = meta->seq_num + 1;
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}

SEC("iter/tcp")
int denied_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	__u8 state;

	if (!skc) {
		summary(ctx->meta, IPPROTO_TCP);
		return 0;
	}
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	state = skc->skc_state;
	if (state == TCP_LISTEN || state == TCP_CLOSE)
		return 0;
	check(ctx->meta, skc, (struct sock *)tp, IPPROTO_TCP);
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
	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	check(ctx->meta, &sk->__sk_common, sk, IPPROTO_UDP);
	return 0;
}
