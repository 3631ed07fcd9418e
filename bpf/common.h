/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared definitions for portcullis BPF programs.
 *
 * Every struct here is mirrored in Go by bpf2go (-type), so the layout is the
 * contract between the kernel side and pkg/. Keep fields naturally aligned and
 * add explicit padding so both sides agree without surprises.
 */
#pragma once

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

/* Cgroup hooks: 1 lets the syscall go on, 0 fails it with EPERM. */
#define SYSCALL_ALLOW 1
#define SYSCALL_DENY 0

/* How many levels of nested cgroups below the container's we walk to find
 * its policy. systemd and runtimes nest a few levels at most. */
#define MAX_CGROUP_DEPTH 16

#define MAX_PORT_RANGES 16

#define POLICY_HAS_ADDR4 (1U << 0)
#define POLICY_HAS_ADDR6 (1U << 1)
#define POLICY_RESTRICT_PORTS (1U << 2)
#define POLICY_HAS_MARK (1U << 3)
#define POLICY_HAS_PRIORITY (1U << 4)
#define POLICY_HAS_DSCP (1U << 5)
/* Raw, ICMP datagram and packet sockets are allowed (bpf/isolation.h). */
#define POLICY_ALLOW_RAW (1U << 8)
/* The policy has no egress rules (egress.h) / no connection caps
 * (limits.h): connect and sendmsg skip those lookups. Negative, so that a
 * policy an older build wrote (without them) is still checked. */
#define POLICY_NO_EGRESS (1U << 9)
#define POLICY_NO_LIMITS (1U << 10)

struct port_range {
	__u16 first;
	__u16 last;
};

/* One per attached cgroup, keyed by the cgroup id. Addresses are in network
 * byte order, as the sock_addr context has them. */
struct policy {
	__u32 flags;
	__u32 addr4;
	__u32 addr6[4];
	__u32 nr_ranges;
	struct port_range ranges[MAX_PORT_RANGES];
	/* marks.h: SO_MARK, SO_PRIORITY and the DSCP (0-63) of its sockets */
	__u32 mark;
	__u32 priority;
	__u8 dscp;
	__u8 pad[3];
};

#define PORTMAP_TO_HOST 0
#define PORTMAP_TO_CONTAINER 1

/* Bind-time port remapping, both directions: bind() rewrites a container
 * port to its host port, getsockname() shows the container port again. */
struct portmap_key {
	__u64 cgroup_id;
	__u16 port; /* host byte order */
	__u8 protocol;
	__u8 direction;
	__u32 pad;
};

/* Attachment records: the JSON description of one attachment (id, cgroup,
 * policy, time), kept in the kernel so that every tool reads the same state
 * without a daemon or files outside bpffs. */
#define ATTACHMENT_ID_MAX 128
/* A record's head is allocated whole for each attachment (the map is not
 * preallocated), so it is small: 512 bytes a value hold the record of a
 * typical container (gzipped when longer) and keep 10,000 attachments near
 * 7 MiB; a longer record continues in 1 KiB chunks in record_chunks
 * (pkg/state/records.go, docs/scale.md). */
#define RECORD_MAX 508

struct attachment_id {
	__u8 id[ATTACHMENT_ID_MAX];
};

struct record {
	__u32 len;
	__u8 data[RECORD_MAX];
};
