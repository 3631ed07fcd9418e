/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Which attachment a socket belongs to, in the socket's local storage.
 *
 * cgroup/sock_create (marks.h) records the key current_policy() returned
 * for the creating task (a cgroup id, or NetNSKey | a namespace cookie for
 * a namespace-keyed attachment) when something needs it: always in the
 * namespace copy, else only for a policy with a mark, priority or DSCP
 * (creating it for every socket cost a microsecond a socket). A socket
 * without storage belongs to its cgroup's attachment, which the readers
 * look up. Accepted TCP sockets inherit it from their listener
 * (BPF_F_CLONE). The accounting programs (accounting.h)
 * count a packet under it, and the socket iterators (sockiter.h) count a
 * destroyed socket under it.
 *
 * Shared by portcullis.c and the iterator objects (the map is pinned once
 * and passed to the others as a replacement): declare nothing else here.
 */
#pragma once

#include "common.h"

/* The attachment a socket belongs to, and the mark and priority its
 * packets get (marks.h), copied here so the packet path needs no policy
 * lookup. */
struct sock_owner {
	__u64 key;
	__u32 flags;
	__u32 mark;
	__u32 priority;
	__u32 pad;
};

#define OWNER_DSCP_APPLIED (1U << 0)
#define OWNER_HAS_MARK (1U << 1)
#define OWNER_HAS_PRIORITY (1U << 2)

static __always_inline void owner_of_policy(struct sock_owner *o, __u64 key, const struct policy *p)
{
	o->key = key;
	o->mark = p->mark;
	o->priority = p->priority;
	if (p->flags & POLICY_HAS_MARK)
		o->flags |= OWNER_HAS_MARK;
	if (p->flags & POLICY_HAS_PRIORITY)
		o->flags |= OWNER_HAS_PRIORITY;
}

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");
