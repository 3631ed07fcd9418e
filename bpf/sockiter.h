/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the socket-destroying iterators share (bpf/terminate.c for removed
 * backends, bpf/egress_terminate.c for peers egress rules now deny): which
 * sockets have a peer to lose, and the events each writes for pkg/terminate:
 * one per socket it lists (a dry run) or fails to destroy, then a summary
 * with the sockets it walked and destroyed.
 */
#pragma once

#include "common.h"
#include <bpf/bpf_core_read.h>
#include "kernel.h"
#include "counters.h"
#include "owners.h"

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
	__u64 cgroup_id;   /* the policy key of the socket's attachment */
	__u64 scanned;     /* summary: sockets the iterator walked */
	__u64 matched;     /* summary: sockets that matched, without an event */
	__u64 destroyed;   /* summary: of those, destroyed (all of them) */
};

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The sockets one run of an iterator destroyed, keyed by its session.
 *
 * A destroyed socket gets no event of its own, only a count in the
 * summary, so that a destroying run's whole output (the summary, and the
 * rare failures) fits in one read(2). Each read that ends while sockets
 * are left makes the kernel stop the walk and resume it at the next read,
 * and kernels before the socket-cookie resume (the 2025 "avoid socket
 * skips and repeats during iteration" series) resume at an offset into
 * the hash bucket: when sockets destroyed before the stop were in the same
 * bucket, the offset passes over as many sockets not yet seen, and a
 * client among them would survive. With one read there is no resume. */
struct term_counts {
	__u64 matched;
	__u64 destroyed;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64); /* bpf_iter_meta.session_id */
	__type(value, struct term_counts);
} session_counts SEC(".maps");

/* term_destroy destroys the socket and counts it: in the run's summary
 * and in the socket_terminated counter of the attachment whose policy key
 * is ev->cgroup_id. It returns false when the socket still needs an event:
 * the destroy failed (ev->result says why), or it could not be counted in
 * the summary. */
static __always_inline bool term_destroy(struct bpf_iter_meta *meta, struct term_event *ev,
					 struct sock_common *skc)
{
	struct term_counts zero = {}, *c;
	__u64 session = meta->session_id;

	ev->result = bpf_sock_destroy(skc);
	if (ev->result)
		return false;
	count_decision(ev->cgroup_id, DECISION_SOCKET_TERMINATED);
	c = bpf_map_lookup_elem(&session_counts, &session);
	if (!c) {
		bpf_map_update_elem(&session_counts, &session, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&session_counts, &session);
		if (!c)
			return false;
	}
	c->matched++;
	c->destroyed++;
	return true;
}

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
	__u64 session = meta->session_id;
	struct term_counts *c;

	/* In the final call seq_num is the index of the last socket shown
	 * (-1 when there was none). */
	ev.scanned = meta->seq_num + 1;
	c = bpf_map_lookup_elem(&session_counts, &session);
	if (c) {
		ev.matched = c->matched;
		ev.destroyed = c->destroyed;
		bpf_map_delete_elem(&session_counts, &session);
	}
	bpf_seq_write(meta->seq, &ev, sizeof(ev));
}
