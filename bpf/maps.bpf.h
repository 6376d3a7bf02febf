/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * maps.bpf.h: every map of the mirror object (names and value types are in
 * mirror_abi.h's comments and src/bpftap/abi.py), the stats counter, and
 * the debug-only log macro.
 */
#ifndef MAPS_BPF_H
#define MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "parse.bpf.h"
#include "tunnels.bpf.h"

/* bpf_printk is GPL-only: the default (non-GPL) build compiles it out */
#ifdef MIRROR_DEBUG
#define dbg(fmt, ...) bpf_printk(fmt, ##__VA_ARGS__)
#else
#define dbg(fmt, ...) ((void)0)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mirror_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_RULES);
	__type(key, __u32);
	__type(value, struct mirror_rule);
} rules SEC(".maps");

/* classification (see enum mirror_dim): field -> class id -> rule bitmap */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RULE_SLOTS * 2 * (MAX_RULES + 2));
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr_key);
	__type(value, __u32);
} addr_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * 2 * PORT_KEYS);
	__type(key, __u32);
	__type(value, struct class_ref);
} port_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * META_KEYS);
	__type(key, __u32);
	__type(value, struct class_ref);
} meta_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * VLAN_KEYS);
	__type(key, __u32);
	__type(value, __u32);
} vlan_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * FLAG_KEYS);
	__type(key, __u32);
	__type(value, __u32);
} flag_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RULE_SLOTS * IFACE_KEYS);
	__type(key, struct iface_key);
	__type(value, __u32);
} iface_classes SEC(".maps");

/* sized at load by the daemon (RULE_SLOTS * class capacity) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * CLASS_CAPACITY);
	__type(key, __u32);
	__type(value, struct rule_bits);
} class_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_session);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MS__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule_stats);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct session_stats);
} session_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct session_seq);
} session_seqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frag_ident);
} frag_ident SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS + 1); /* + BUDGET_KEY */
	__type(key, __u32);
	__type(value, struct session_limit);
} session_limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LINKS);
	__type(key, __u32);
	__type(value, struct link_rate);
} link_rates SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LINKS);
	__type(key, __u32);
	__type(value, struct link_state);
} link_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS * GROUP_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} group_buckets SEC(".maps");

/* per CPU, key a session's stats_id: packets seen, for 1-in-N sampling */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_SESSIONS);
	__type(key, __u32);
	__type(value, __u64);
} session_samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mirror_clock);
} clock SEC(".maps");

/* source interfaces by ifindex, for stage 1: the id it puts in the mark */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SOURCES);
	__type(key, __u32);
	__type(value, __u32);
} source_ids SEC(".maps");

/* and back, for stage 2: id -> ifindex (0: none) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SOURCES);
	__type(key, __u32);
	__type(value, __u32);
} source_ifindexes SEC(".maps");

/* stage 2's per-packet state, shared by every session's copy */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct copy_info);
} copy_scratch SEC(".maps");

/* a chunk of the inner frame being checksummed (too big for the stack) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_chunk);
} csum_scratch SEC(".maps");

/* rule filters (mirror_abi.h): each filter rule's verdict on this CPU's packet */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct rule_bits);
} filter_bits SEC(".maps");

/* the generated filter programs, and stage 1's resume entries */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, FILTER_PROGS);
	__type(key, __u32);
	__type(value, __u32);
} filter_progs SEC(".maps");

/*
 * Parsed headers pass through this per-CPU slot before classification:
 * values read back from a map are unknown to the verifier, so the
 * classifier's loops are verified once instead of once per parse path
 * (which hit the 1M instruction limit).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pkt_info);
} scratch SEC(".maps");

/* `n` at once: the segments of a GSO copy */
static __always_inline void count_n(__u32 reason, __u32 n)
{
	__u64 *slot = bpf_map_lookup_elem(&stats, &reason);

	if (slot)
		*slot += n;
}

static __always_inline void count(__u32 reason)
{
	count_n(reason, 1);
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} events SEC(".maps");

/* never read: puts struct mirror_log in the BTF the ABI test checks */
const struct mirror_log mirror_log_layout = {};

/* a record for the agent's log; a full ring buffer loses it, counted */
static __always_inline void log_event(__u32 level, __u32 code,
				      __u32 ifindex, __u32 rule,
				      __u32 session, __u64 a0, __u64 a1)
{
	struct mirror_log rec = {
		.ts_ns = bpf_ktime_get_ns(),
		.code = code,
		.level = level,
		.ifindex = ifindex,
		.rule = rule,
		.session = session,
		.arg = { a0, a1 },
	};

	if (bpf_ringbuf_output(&events, &rec, sizeof(rec), 0))
		count(MS_LOG_LOST);
}

/* finished copies for the daemon to send (redirect_chain off) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, COPIES_BYTES);
} copies SEC(".maps");

/* one copy being put together for `copies` */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mirror_copy);
} ring_scratch SEC(".maps");

#endif /* MAPS_BPF_H */
