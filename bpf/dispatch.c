// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket dispatch (seed 002): an sk_lookup program that picks the socket for
 * an incoming TCP connection or UDP datagram by prefix and port, so that one
 * socket serves a whole prefix and any ports, and services share a port on
 * disjoint prefixes. The model is cloudflare/tubular's: bindings (protocol,
 * prefix, ports) name a destination (a label and a protocol), and each
 * destination has at most one registered socket in a sockmap.
 *
 * One copy of this program and its maps is loaded per network namespace by
 * pkg/dispatch and attached there with a pinned bpf_link.
 *
 * Port ranges live in the LPM trie as aligned blocks: a range N-M is split
 * by pkg/dispatch into blocks of 2^level ports starting at a multiple of
 * 2^level, and each block is one trie entry keyed by (protocol, level, first
 * port of the block, address prefix). A lookup masks the packet's port for
 * every level in use (the `levels` bitmap: usually only 0 for single ports
 * and 16 for "all ports"), so it costs one trie lookup per level in use.
 * The most specific binding wins: the longest prefix, then the one with the
 * fewest ports (a single port over a range).
 */
#include "common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define DISPATCH_MAX_DESTS 4096
#define DISPATCH_MAX_BLOCKS (1 << 20)
#define DISPATCH_MAX_RULES 65536
#define DISPATCH_LABEL_MAX 64
#define DISPATCH_LEVELS 17 /* blocks of 2^0 .. 2^16 ports */

/* A trie key. prefixlen counts the bits after it that must match: always
 * protocol, level and port (32 bits), then the address prefix. */
struct dispatch_key {
	__u32 prefixlen;
	__u8 protocol;
	__u8 level;
	__u16 port;    /* network byte order: the first port of the block */
	__u32 addr[4]; /* IPv6, or IPv4-mapped IPv6; network byte order */
};

/* What a trie entry leads to, and how specific its binding is. */
struct dispatch_binding {
	__u32 dest;      /* index into sockets and counters */
	__u32 ports;     /* how many ports the binding covers, 1 .. 65536 */
	__u32 prefixlen; /* address bits, IPv4 counted as v4-mapped (96 + n) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DISPATCH_MAX_BLOCKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dispatch_key);
	__type(value, struct dispatch_binding);
} blocks SEC(".maps");

/* Bit n set: some binding has a block of 2^n ports. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} levels SEC(".maps");

/* The registered socket of each destination. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, DISPATCH_MAX_DESTS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

/* Per destination; index 0 counts lookups no binding matched. */
struct dispatch_counters {
	__u64 lookups; /* a binding of the destination matched */
	__u64 hits;    /* the lookup was given the registered socket */
	__u64 misses;  /* no socket registered, or it cannot take the packet */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DISPATCH_MAX_DESTS);
	__type(key, __u32);
	__type(value, struct dispatch_counters);
} counters SEC(".maps");

/* The two maps below are the control plane's own records, read and written
 * only by pkg/dispatch: they keep the state in the kernel, like the
 * attachment records, so no file outside bpffs is needed. */

/* A destination: a label and a protocol. */
struct dispatch_dest {
	__u8 label[DISPATCH_LABEL_MAX];
	__u8 protocol;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DISPATCH_MAX_DESTS);
	__type(key, struct dispatch_dest);
	__type(value, __u32);
} destinations SEC(".maps");

/* A binding as the operator wrote it; the value is its destination. */
struct dispatch_rule {
	__u32 addr[4]; /* IPv6 or IPv4-mapped, network byte order, masked */
	__u8 protocol;
	__u8 prefixlen; /* address bits, IPv4 counted as v4-mapped */
	__u16 first;    /* host byte order */
	__u16 last;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DISPATCH_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dispatch_rule);
	__type(value, __u32);
} rules SEC(".maps");

/* a is more specific than b (b may be NULL). */
static __always_inline bool more_specific(const struct dispatch_binding *a, const struct dispatch_binding *b)
{
	if (!b)
		return true;
	if (a->prefixlen != b->prefixlen)
		return a->prefixlen > b->prefixlen;
	return a->ports < b->ports;
}

static __always_inline void count(__u32 dest, int what)
{
	struct dispatch_counters *c = bpf_map_lookup_elem(&counters, &dest);

	if (!c)
		return;
	switch (what) {
	case 0:
		c->lookups++;
		break;
	case 1:
		c->hits++;
		break;
	default:
		c->misses++;
	}
}

SEC("sk_lookup")
int dispatch(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0, *mask;
	struct dispatch_key key = {
		.prefixlen = (sizeof(key) - sizeof(key.prefixlen)) * 8,
		.protocol = ctx->protocol,
	};
	const struct dispatch_binding *best = NULL, *b;
	struct bpf_sock *sk;
	__u32 port = ctx->local_port;
	long err;

	mask = bpf_map_lookup_elem(&levels, &zero);
	if (!mask || !*mask)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		key.addr[2] = bpf_htonl(0x0000ffff);
		key.addr[3] = ctx->local_ip4;
	} else {
		/* One load per field, straight from ctx: clang otherwise
		 * forms ctx+offset once, which the verifier refuses. */
		key.addr[0] = ((volatile struct bpf_sk_lookup *)ctx)->local_ip6[0];
		key.addr[1] = ((volatile struct bpf_sk_lookup *)ctx)->local_ip6[1];
		key.addr[2] = ((volatile struct bpf_sk_lookup *)ctx)->local_ip6[2];
		key.addr[3] = ((volatile struct bpf_sk_lookup *)ctx)->local_ip6[3];
	}

	for (int level = 0; level < DISPATCH_LEVELS; level++) {
		if (!(*mask & (1U << level)))
			continue;
		key.level = level;
		key.port = bpf_htons(port & ~((1U << level) - 1));
		b = bpf_map_lookup_elem(&blocks, &key);
		if (b && more_specific(b, best))
			best = b;
	}
	if (!best) {
		count(0, 0);
		return SK_PASS;
	}

	__u32 dest = best->dest;
	count(dest, 0);
	sk = bpf_map_lookup_elem(&sockets, &dest);
	if (!sk) {
		/* The prefix and ports are claimed but the service is down:
		 * refuse (RST, ICMP port unreachable) rather than hand the
		 * traffic to another socket bound there. */
		count(dest, 2);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		/* Wrong family (an IPv4 socket for an IPv6 binding), or the
		 * socket stopped listening: the same as no socket. */
		count(dest, 2);
		return SK_DROP;
	}
	count(dest, 1);
	return SK_PASS;
}
