/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * outer.bpf.h: stage 2's room for the outer headers and what goes into
 * them besides the session: the head grown in front of the inner frame
 * (the inner addresses and popped tags put back on the first growth) and
 * the session's sequence number. The bytes come from tunnels.bpf.h.
 */
#ifndef OUTER_BPF_H
#define OUTER_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"

/*
 * Grow the head by `grow` bytes; on the first growth (to `hlen`) also put
 * the inner frame's addresses and popped tags back before its EtherType.
 */
static __always_inline int grow_head(struct __sk_buff *skb, __u32 grow,
				     __u32 hlen, const struct copy_info *ci,
				     int first)
{
	__u32 ntags = ci->ntags;

	if (ntags > MAX_VLAN_TAGS)
		return -1;
	if (first)
		grow += ntags * sizeof(struct vlan_ins);
	if (bpf_skb_change_head(skb, grow, 0))
		return -1;
	if (!first)
		return 0;
	return bpf_skb_store_bytes(
		skb, hlen, &ci->l2,
		2 * ETH_ALEN + ntags * sizeof(struct vlan_ins), 0);
}

/* next sequence number of a session: one counter for all CPUs */
static __always_inline __u32 next_seq(__u32 stats_id)
{
	struct session_seq *q = bpf_map_lookup_elem(&session_seqs, &stats_id);
	__u32 seq;

	if (!q)
		return 0;
	bpf_spin_lock(&q->lock);
	seq = ++q->seq;
	bpf_spin_unlock(&q->lock);
	return seq;
}

static __always_inline int has_seq(const struct mirror_session *s)
{
	return s->tunnel == MIRROR_TUN_GENEVE ||
	       s->tunnel == MIRROR_TUN_ERSPAN2 ||
	       s->tunnel == MIRROR_TUN_ERSPAN3 ||
	       (s->tunnel == MIRROR_TUN_GRE && (s->flags & MIRROR_SF_SEQ));
}

#endif /* OUTER_BPF_H */
