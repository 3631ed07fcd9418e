/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The per-attachment traffic counters: packets and bytes per direction,
 * address family and protocol, in a per-CPU hash keyed by the attachment's
 * policy key (a cgroup id, or NETNS_KEY | a namespace cookie). pkg/state
 * creates each attachment's zeroed entry and deletes it at detach; the
 * programs only look up and add.
 *
 * The cgroup_skb programs of accounting.h count into it, for cgroup-keyed
 * and namespace-keyed attachments alike; pkg/stats reads it.
 */
#pragma once

#include "common.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define ACCT_INGRESS 0
#define ACCT_EGRESS 1
#define ACCT_DIRECTIONS 2

#define ACCT_IPV4 0
#define ACCT_IPV6 1
#define ACCT_FAMILIES 2

#define ACCT_TCP 0
#define ACCT_UDP 1
#define ACCT_OTHER 2
#define ACCT_PROTOCOLS 3

struct acct_counter {
	__u64 packets;
	__u64 bytes;
};

struct traffic_counts {
	struct acct_counter c[ACCT_DIRECTIONS][ACCT_FAMILIES][ACCT_PROTOCOLS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct traffic_counts);
} traffic SEC(".maps");


/* Add one skb of ip_len bytes at the IP layer, and its segments. */
static __always_inline void traffic_add(struct traffic_counts *t, __u32 direction, __u32 family,
					__u32 proto, __u32 segs, __u32 ip_len)
{
	struct acct_counter *c;

	if (direction >= ACCT_DIRECTIONS || family >= ACCT_FAMILIES || proto >= ACCT_PROTOCOLS)
		return;
	c = &t->c[direction][family][proto];
	/* Per-CPU, but a softirq can interrupt a task in the middle of an
	 * update on the same CPU: the adds are atomic (and uncontended). */
	__sync_fetch_and_add(&c->packets, segs ? segs : 1);
	__sync_fetch_and_add(&c->bytes, ip_len);
}
