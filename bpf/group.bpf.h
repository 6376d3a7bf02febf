/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * group.bpf.h: stage 2's collector groups: a flow hash that is the same
 * both ways, and the group member the daemon's buckets give that hash
 * (rendezvous hashing, src/bpftap/agent/tables.py), so both directions of
 * a flow reach one collector.
 */
#ifndef GROUP_BPF_H
#define GROUP_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

/* murmur3's 32-bit finaliser: every input bit moves every output bit */
static __always_inline __u32 fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/*
 * A hash of the inner frame's flow that is the same in both directions:
 * sums and xors of the addresses and ports do not change when source and
 * destination swap. 0 for a frame that does not parse. A global function,
 * verified once, as the session loop calls it.
 */
__noinline __u32 flow_sym_hash(struct __sk_buff *skb)
{
	struct pkt_info p = {};
	__u32 sum = 0, mix = 0;

	if (!skb || parse_frame(skb, &p) != PARSE_OK)
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		sum += p.src[i] + p.dst[i];
		mix ^= p.src[i] ^ p.dst[i];
	}
	if (p.has_ports)
		sum ^= ((__u32)(p.sport ^ p.dport) << 16) |
		       (__u16)(p.sport + p.dport);
	return fmix32(sum ^ ((mix << 13) | (mix >> 19)) ^ p.proto);
}

/* the member of a collector group at `slot` that takes this flow */
static __always_inline __u32 group_member(__u32 slot, __u32 hash)
{
	__u32 k = slot * GROUP_BUCKETS + (hash & (GROUP_BUCKETS - 1));
	__u32 *member = bpf_map_lookup_elem(&group_buckets, &k);

	return member ? *member : 0;
}

#endif /* GROUP_BPF_H */
