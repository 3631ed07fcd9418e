/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policies keyed by network namespace.
 *
 * A container with a network namespace of its own is named by that
 * namespace, as CNI names it: the runtimes call ADD before any of its
 * processes exist, and a Kubernetes pod's containers each have a cgroup of
 * their own. Its policy is stored under NETNS_KEY | the namespace's cookie
 * (the kernel's net->net_cookie, which userspace reads with
 * getsockopt(SO_NETNS_COOKIE)), and a second copy of the programs, loaded
 * with netns_copy = 1, is attached once to a common ancestor cgroup (the
 * cgroup v2 root by default), so that every task in the namespace finds it,
 * whatever its cgroup.
 *
 * Bit 63 keeps the namespace keys apart from cgroup ids (small inode
 * numbers) in the policies map and in every per-container map keyed by what
 * current_policy() returns.
 */
#pragma once

#include "kernel.h"

#define NETNS_KEY (1ULL << 63)

/* Only the task's namespace is read; CO-RE fixes the offsets. */
struct net {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));

/* Set by the loader on the copy attached to the common ancestor: that copy
 * acts only on namespace-keyed policies, and the per-cgroup copy only on
 * cgroup-keyed ones, so a task that runs both acts once. */
volatile const __u32 netns_copy = 0;

/* The policy key of the current task's network namespace. The task's, like
 * the cgroup id: the policy follows who makes the call. */
static __always_inline __u64 current_netns_key(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return NETNS_KEY | task->nsproxy->net_ns->net_cookie;
}
