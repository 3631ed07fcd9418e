/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Egress rules, checked at connect(2) and at sendmsg(2) of unconnected UDP
 * after service translation (seed 003, "Filtering").
 *
 * The rules of one container are compiled by pkg/egress into an LPM trie
 * keyed by (container key, destination prefix). Each entry holds, in policy
 * order, every rule that can match an address under that prefix: the rules
 * whose CIDR contains the prefix and the rules without a CIDR, followed by
 * the egressDefault as a catch-all. Two CIDRs are either nested or
 * disjoint, so the longest matching prefix has exactly the candidates of
 * the destination and one lookup plus a short scan answers "first match
 * wins" whatever the number of rules. A container with egress rules always
 * has the IPv4 (::ffff:0:0/96) and IPv6 (::/0) roots, so a miss means the
 * container has no rules.
 *
 * Group rules match a destination address that belongs to an attachment
 * carrying the group: group_members maps each attached address to the
 * bitmap of its attachments' groups, maintained at attach and detach.
 */
#pragma once

#include "common.h"

#define MAX_RULE_PORTS 8
#define MAX_EGRESS_MATCH 16

#define EGRESS_DENY 0
#define EGRESS_ALLOW 1

/* LPM key: the prefix length counts the owner's 64 bits too. The owner is
 * two words so the key has no padding. */
struct egress_key {
	__u32 prefixlen;
	__u32 owner[2];
	__u32 addr[4]; /* IPv6, or IPv4-mapped IPv6; network byte order */
};

struct egress_rule {
	__u64 groups; /* the destination must be in one of them; 0: any */
	__u8 action;
	__u8 protocol; /* IPPROTO_*; 0: any */
	__u8 nr_ports; /* 0: any port */
	__u8 pad[5];
	struct port_range ports[MAX_RULE_PORTS]; /* host byte order */
};

struct egress_match {
	__u32 nr;
	__u32 pad;
	struct egress_rule rules[MAX_EGRESS_MATCH];
};

struct egress_addr {
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct egress_key);
	__type(value, struct egress_match);
} egress_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct egress_addr);
	__type(value, __u64);
} group_members SEC(".maps");

/* Bookkeeping of pkg/egress, never read by the programs: the bit of each
 * group name in use with the number of attachments naming it, and for
 * each (address, group bit) the number of attachments that give the
 * address the group. With them an attach or detach touches only its own
 * groups and addresses. */
#define MAX_GROUPS 64

struct group_name {
	char name[64];
};

struct group_bit {
	__u32 bit;
	__u32 refs;
};

struct member_key {
	__u32 addr[4];
	__u32 bit;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_GROUPS);
	__type(key, struct group_name);
	__type(value, struct group_bit);
} group_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct member_key);
	__type(value, __u32);
} group_refs SEC(".maps");

static __always_inline bool egress_port_in(const struct egress_rule *r, __u16 port)
{
	for (int i = 0; i < MAX_RULE_PORTS; i++) {
		if (i >= r->nr_ports)
			break;
		if (port >= r->ports[i].first && port <= r->ports[i].last)
			return true;
	}
	return false;
}

/* egress_allowed: first matching rule's action for (addr, port, protocol). */
static __always_inline bool egress_allowed(__u64 owner, const __u32 addr[4], __u16 port,
					   __u8 protocol)
{
	struct egress_key key = {.prefixlen = 64 + 128};
	struct egress_addr dst;
	struct egress_match *m;
	__u64 *member, groups = 0;
	bool groups_read = false;

	__builtin_memcpy(key.owner, &owner, sizeof(owner));
	for (int i = 0; i < 4; i++) {
		key.addr[i] = addr[i];
		dst.addr[i] = addr[i];
	}
	m = bpf_map_lookup_elem(&egress_rules, &key);
	if (!m)
		return true;
	for (int i = 0; i < MAX_EGRESS_MATCH; i++) {
		const struct egress_rule *r = &m->rules[i];

		if (i >= m->nr)
			break;
		if (r->protocol && r->protocol != protocol)
			continue;
		if (r->nr_ports && !egress_port_in(r, port))
			continue;
		if (r->groups) {
			if (!groups_read) {
				member = bpf_map_lookup_elem(&group_members, &dst);
				groups = member ? *member : 0;
				groups_read = true;
			}
			if (!(r->groups & groups))
				continue;
		}
		return r->action == EGRESS_ALLOW;
	}
	return true;
}

/* The destination of a sock_addr call (after service translation) as an
 * IPv6 or IPv4-mapped address. The verifier allows user_ip4 only in the
 * IPv4 programs and user_ip6 only in the IPv6 ones, so the family is a
 * compile-time constant. */
static __always_inline void egress_dst(const struct bpf_sock_addr *ctx, bool v6, __u32 addr[4])
{
	if (!v6) {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0x0000ffff);
		addr[3] = ctx->user_ip4;
		return;
	}
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
}

/* egress_check is the hook of connect4/6 and sendmsg4/6: SYSCALL_DENY
 * (EPERM) when the container's rules deny the destination. A policy
 * without rules (POLICY_NO_EGRESS) costs no lookup. */
static __always_inline int egress_check(struct bpf_sock_addr *ctx, __u64 owner,
					const struct policy *p, bool v6)
{
	__u32 addr[4];

	if (p->flags & POLICY_NO_EGRESS)
		return SYSCALL_ALLOW;
	egress_dst(ctx, v6, addr);
	if (egress_allowed(owner, addr, bpf_ntohs(ctx->user_port), ctx->protocol))
		return SYSCALL_ALLOW;
	return SYSCALL_DENY;
}
