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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SESSIONS);
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
	__uint(max_entries, MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct session_stats);
} session_stats SEC(".maps");

/*
 * Parsed headers pass through this per-CPU slot before classification:
 * values read back from a map are unknown to the verifier, so the rule loop
 * is verified once instead of once per parse path (which hit the 1M
 * instruction limit).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pkt_info);
} scratch SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *slot = bpf_map_lookup_elem(&stats, &reason);

	if (slot)
		*slot += 1;
}

#endif /* MAPS_BPF_H */
