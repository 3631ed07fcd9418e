/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Decision counters: how often portcullis refused, remapped or translated
 * something for each attachment, so an operator sees what happened beyond
 * the application's errno.
 *
 * One per-CPU entry per attachment, keyed by the key current_policy()
 * returns. pkg/state creates the (zeroed) entry at attach time and
 * deletes it at detach, so the programs only look up and never allocate;
 * pkg/stats sums the CPUs. The indices below are the contract with
 * pkg/stats (and its metric label names): append new reasons, never
 * renumber. The socket iterators (sockiter.h) count the sockets they
 * destroy here too, under the socket's attachment. decisions_user is for
 * reasons userspace decides itself (none today; pkg/stats Maps.Add);
 * pkg/state creates its entries likewise.
 */
#pragma once

#include "common.h"

#define DECISION_BIND_REFUSED_ADDRESS 0
#define DECISION_BIND_REFUSED_PORT 1
#define DECISION_BIND_REMAPPED 2
#define DECISION_CONNECT_TRANSLATED 3
#define DECISION_CONNECT_REFUSED_NO_BACKEND 4
#define DECISION_CONNECT_REFUSED_EGRESS 5 /* reserved: egress rules (issue 13) */
#define DECISION_CONNECT_REFUSED_CAP 6    /* reserved: connection caps (issue 13) */
#define DECISION_UDP_SOURCE_REWRITTEN 7
#define DECISION_SOCKET_TERMINATED 8 /* counted by the iterators, sockiter.h */
/* Room for more reasons without changing the map's value size. */
#define DECISION_MAX 16

struct decision_counts {
	__u64 count[DECISION_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct decision_counts);
} decisions SEC(".maps");

/* Reasons userspace would count (none today), same layout.
 * Not per-CPU: pkg/stats updates it under a flock on its pin, and writing
 * a per-CPU entry from userspace would overwrite the programs' adds. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct decision_counts);
} decisions_user SEC(".maps");

static __always_inline void count_decision(__u64 key, __u32 reason)
{
	struct decision_counts *d = bpf_map_lookup_elem(&decisions, &key);

	/* Per-CPU, but another task can preempt this one on the same CPU in
	 * the middle of the update: the add is atomic (and uncontended). */
	if (d && reason < DECISION_MAX)
		__sync_fetch_and_add(&d->count[reason], 1);
}
