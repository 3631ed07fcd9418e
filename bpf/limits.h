/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection caps (seed 003, "Preventing Resource Exhaustion"): count a
 * container's live outgoing TCP connections and connected UDP sockets per
 * destination address:port (after service translation) and in total, and
 * fail the connect that would go over a cap with EAGAIN.
 *
 * Counting follows the socket's real lifecycle, never a timer:
 *   - connect4/6 takes a slot and remembers, keyed by the socket's cookie
 *     (conn_slots), which counters it took;
 *   - the slot is given back when the socket is closed (cgroup/sock_release)
 *     or when a TCP connection reaches TCP_CLOSE (refused, reset, finished:
 *     sock_ops state callback);
 *   - a UDP socket that connects elsewhere moves its slot: it takes one for
 *     the new destination, then gives the old one back.
 * A slot is given back once: its `counted` flag is exchanged. (A hash map
 * rather than socket-local storage: creating local storage for every
 * socket cost a few microseconds per connect; a hash element costs little.)
 * The generation of the container's limits entry is remembered too, so a
 * socket counted under an earlier attachment of the same key never gives
 * back a slot it did not take.
 */
#pragma once

#include "common.h"
#include "kernel.h"

#define EAGAIN 11
#define TCP_STATE_CLOSE 7 /* BPF_TCP_CLOSE */

struct conn_limits {
	__u32 per_destination; /* 0: no cap */
	__u32 total;	       /* 0: no cap */
	__u64 generation;
};

/* One counter: a destination of one container, or (address and port
 * zero, protocol 0) the container's total. */
struct conn_key {
	__u64 owner;
	__u32 addr[4]; /* IPv6, or IPv4-mapped IPv6; network byte order */
	__u16 port;    /* host byte order */
	__u8 protocol;
	__u8 pad[5];
};

struct conn_slot {
	struct conn_key key;
	__u64 generation;
	__u32 counted;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	/* Written at attach only: an entry costs memory while it exists. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct conn_limits);
} limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct conn_key);
	__type(value, __u64);
} conn_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64); /* socket cookie */
	__type(value, struct conn_slot);
} conn_slots SEC(".maps");

/* take adds one to a counter unless it is at cap (0: no cap). The add comes
 * first and is undone when it went over, so concurrent connects never pass
 * the cap together. */
static __always_inline bool limits_take(const struct conn_key *key, __u32 cap)
{
	__u64 *count = bpf_map_lookup_elem(&conn_counts, key);

	if (!count) {
		__u64 zero = 0;

		bpf_map_update_elem(&conn_counts, key, &zero, BPF_NOEXIST);
		count = bpf_map_lookup_elem(&conn_counts, key);
		if (!count)
			return false; /* the map is full: refuse rather than not count */
	}
	if (__sync_fetch_and_add(count, 1) >= cap && cap) {
		__sync_fetch_and_sub(count, 1);
		return false;
	}
	return true;
}

/* give subtracts one; a destination's counter is deleted at zero so the
 * map holds only live destinations. (A connect racing with that delete may
 * lose its count: the cap is then off by one until it closes.) */
static __always_inline void limits_give(const struct conn_key *key, bool drop)
{
	__u64 *count = bpf_map_lookup_elem(&conn_counts, key);

	if (!count)
		return;
	if (__sync_fetch_and_sub(count, 1) == 1 && drop)
		bpf_map_delete_elem(&conn_counts, key);
}

static __always_inline void limits_give_slot(struct conn_slot *slot)
{
	struct conn_key total = {};
	struct conn_limits *lim;

	if (!__sync_lock_test_and_set(&slot->counted, 0))
		return;
	total.owner = slot->key.owner;
	lim = bpf_map_lookup_elem(&limits, &total.owner);
	if (!lim || lim->generation != slot->generation)
		return;
	limits_give(&slot->key, true);
	limits_give(&total, false);
}

/* limits_release gives back what the socket with this cookie holds. */
static __always_inline void limits_release(__u64 cookie)
{
	struct conn_slot *slot = bpf_map_lookup_elem(&conn_slots, &cookie);

	if (!slot)
		return;
	limits_give_slot(slot);
	bpf_map_delete_elem(&conn_slots, &cookie);
}

static __always_inline bool keys_equal(const struct conn_key *a, const struct conn_key *b)
{
	return a->port == b->port && a->protocol == b->protocol && a->addr[0] == b->addr[0] &&
	       a->addr[1] == b->addr[1] && a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3];
}

/* limits_connect is the hook of connect4/6, after egress: it takes a slot
 * for the destination or fails the connect with EAGAIN. A policy without
 * caps (POLICY_NO_LIMITS) costs no lookup. */
static __always_inline int limits_connect(struct bpf_sock_addr *ctx, __u64 owner,
					  const struct policy *p, bool v6)
{
	struct conn_key key = {.owner = owner}, total = {.owner = owner};
	struct bpf_sock *sk = ctx->sk;
	struct conn_slot fresh = {}, *slot;
	struct conn_limits *lim;
	bool moving;
	__u64 cookie;

	if (p->flags & POLICY_NO_LIMITS)
		return SYSCALL_ALLOW;
	lim = bpf_map_lookup_elem(&limits, &owner);
	if (!lim || !sk)
		return SYSCALL_ALLOW;
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYSCALL_ALLOW;
	/* A TCP socket that is connecting or connected already gets EISCONN
	 * or EALREADY from the kernel: it keeps the slot it has. */
	if (ctx->protocol == IPPROTO_TCP && sk->state != TCP_STATE_CLOSE)
		return SYSCALL_ALLOW;
	egress_dst(ctx, v6, key.addr);
	key.port = bpf_ntohs(ctx->user_port);
	key.protocol = ctx->protocol;
	cookie = bpf_get_socket_cookie(ctx);
	/* A socket that holds a slot already (a UDP socket connecting again,
	 * or the same connect seen by the programs of nested attachments)
	 * moves it: the same destination keeps it, another takes a slot there
	 * first and gives the old one back after, so a refused move leaves the
	 * socket as counted as it still is connected. The total is unchanged. */
	slot = bpf_map_lookup_elem(&conn_slots, &cookie);
	moving = slot && slot->counted && slot->generation == lim->generation;
	if (moving && keys_equal(&slot->key, &key))
		return SYSCALL_ALLOW;
	if (!limits_take(&key, lim->per_destination))
		goto refuse;
	if (!moving && !limits_take(&total, lim->total)) {
		limits_give(&key, true);
		goto refuse;
	}
	if (moving) {
		if (__sync_lock_test_and_set(&slot->counted, 0))
			limits_give(&slot->key, true);
		else
			/* released meanwhile, with its total: count this one */
			limits_take(&total, 0);
	}
	fresh.key = key;
	fresh.generation = lim->generation;
	fresh.counted = 1;
	if (bpf_map_update_elem(&conn_slots, &cookie, &fresh, BPF_ANY)) {
		/* The map is full: the slot could never be given back. */
		limits_give(&key, true);
		limits_give(&total, false);
		bpf_set_retval(-EAGAIN);
		return SYSCALL_DENY;
	}
	return SYSCALL_ALLOW;
refuse:
	bpf_set_retval(-EAGAIN);
	return SYSCALL_DENY;
}

/* A counted TCP socket asks for state callbacks when it sends its SYN, so
 * its slot is given back the moment the connection is over, even while the
 * application still holds the socket. Part of the one sockops program
 * (portcullis.c); the slot of a closed socket is given back by the one
 * cgroup/sock_release program (limits_release). */
static __always_inline void limits_sockops(struct bpf_sock_ops *ops)
{
	__u64 cookie;

	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* limits_connect made the cookie of every counted socket */
		if (!ops->sk || !sock_cookie_made(ops->sk))
			break;
		cookie = bpf_get_socket_cookie(ops);
		if (bpf_map_lookup_elem(&conn_slots, &cookie))
			bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags |
							       BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == TCP_STATE_CLOSE)
			limits_release(bpf_get_socket_cookie(ops));
		break;
	}
}
