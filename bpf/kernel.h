/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The few kernel types the programs read directly, declared by hand.
 *
 * There is no vmlinux.h in the tree: each struct below lists only the fields
 * portcullis reads, and preserve_access_index makes clang emit CO-RE
 * relocations, so the loader (cilium/ebpf) fixes every offset against the
 * running kernel's BTF. Anonymous unions and nesting in the real structs do
 * not matter: members are matched by name.
 */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct in6_addr___kernel {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct atomic64___kernel {
	__s64 counter;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	unsigned char skc_reuse : 4;
	unsigned char skc_reuseport : 1;
	unsigned char skc_ipv6only : 1;
	struct in6_addr___kernel skc_v6_daddr;
	struct in6_addr___kernel skc_v6_rcv_saddr;
	struct atomic64___kernel skc_cookie; /* 0 until someone asks for it */
} __attribute__((preserve_access_index));

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	int level;
	struct kernfs_node *kn;
	struct cgroup *ancestors[];
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct nsproxy;

struct task_struct {
	struct nsproxy *nsproxy;
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	void *sk_bpf_storage; /* NULL while no socket-storage map has an entry */
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct tcp_sock;
struct udp_sock;
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

/* The contexts of the iter/tcp and iter/udp programs. */
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
} __attribute__((preserve_access_index));

/* Socket states (include/net/tcp_states.h); UDP uses ESTABLISHED for a
 * connected socket. */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_LISTEN 10
#define TCP_CLOSE 7

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* The kernel's struct sock behind a struct bpf_sock (a context, ctx->sk
 * or skb->sk), to read what struct bpf_sock does not show. The cast is
 * free (the verifier turns it into a move) and the reads are plain loads
 * that the kernel guards, where BPF_CORE_READ would call a helper: on the
 * per-socket and per-packet paths that call costs more than the read. */
static __always_inline struct sock *kernel_sock(const void *sk)
{
	return bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
}

/* The current task's cgroup v2 id: what bpf_get_current_cgroup_id()
 * returns, read the same way (task -> css_set -> default cgroup -> kernfs
 * id). The helper wraps those reads in its own RCU read lock, which costs
 * two more calls (about 35 ns on the machines measured,
 * docs/performance.md); a program already runs inside one, so the reads
 * are safe here. Every current_policy() starts with it. */
static __always_inline __u64 current_cgroup_id(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return task->cgroups->dfl_cgrp->kn->id;
}

/* Has the kernel made this socket's cookie yet? It makes it when first
 * asked (bpf_get_socket_cookie, SO_COOKIE, sock_diag), so a socket without
 * one is in no map keyed by cookie, and a hook can skip the lookups (and
 * the cookie) for it. sk is a struct bpf_sock (a context or ctx->sk). */
static __always_inline bool sock_cookie_made(const void *sk)
{
	return kernel_sock(sk)->__sk_common.skc_cookie.counter != 0;
}
