/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the socket-destroying iterators share (bpf/terminate.c for removed
 * backends, bpf/egress_terminate.c for peers egress rules now deny): which
 * sockets have a peer to lose, and the event each writes for pkg/terminate.
 */
#pragma once

#include "common.h"
#include <bpf/bpf_core_read.h>
#include "kernel.h"

#define TERM_EVENT_SOCKET 1
#define TERM_EVENT_SUMMARY 2

/* One line of the iterator's output, read by pkg/terminate. */
struct term_event {
	__u32 kind;
	__s32 result; /* bpf_sock_destroy's return; 0 in a dry run */
	__u32 peer[4];
	__u32 local[4];
	__u16 peer_port;  /* host byte order */
	__u16 local_port; /* host byte order */
	__u8 protocol;
	__u8 state;
	__u16 pad;
	__u32 family;
	__u32 pad2;
	__u64 cgroup_id;   /* the attached cgroup that holds the policy */
	__u64 scanned;     /* summary: sockets the iterator walked */
};

static __always_inline void address_of(struct sock_common *skc, bool peer, __u32 out[4])
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

/* tcp_with_peer is the full TCP socket an iter/tcp step shows when it has a
 * peer (established, connecting, closing), else NULL. Time-wait and
 * request sockets are not full sockets: they have no cgroup, and nothing
 * in them waits on the peer. */
static __always_inline struct sock *tcp_with_peer(struct sock_common *skc)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	__u8 state;

	if (!tp)
		return NULL;
	state = skc->skc_state;
	if (state == TCP_LISTEN || state == TCP_CLOSE)
		return NULL;
	return (struct sock *)tp;
}

/* Only a connected UDP socket has a peer to lose. */
static __always_inline bool udp_with_peer(struct sock *sk)
{
	return sk->__sk_common.skc_state == TCP_ESTABLISHED;
}

/* term_socket fills the socket part of an event. */
static __always_inline void term_socket(struct term_event *ev, struct sock_common *skc)
{
	ev->family = skc->skc_family;
	ev->state = skc->skc_state;
	address_of(skc, true, ev->peer);
	address_of(skc, false, ev->local);
	ev->peer_port = bpf_ntohs(skc->skc_dport);
	ev->local_port = skc->skc_num;
}

static __always_inline void summary(struct bpf_iter_meta *meta, __u8 protocol)
{
	struct term_event ev = {.kind = TERM_EVENT_SUMMARY, .protocol = protocol};

	/* In the final call seq_num is the index of the last socket shown
	 * (-1 when there was none). */
	ev.scanned = meta->seq_num + 1;
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}
