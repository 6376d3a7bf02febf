/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * outer.bpf.h: stage 2's room for the outer headers and what goes into
 * them besides the session: the head grown in front of the inner frame
 * (the inner addresses and popped tags put back on the first growth) and
 * the session's sequence number; and write_outer(), which puts the outer
 * headers built by tunnels.bpf.h in front of the inner frame.
 *
 * The head only ever grows: shrinking (bpf_skb_adjust_room) would cut the
 * inner frame. The daemon gives session slots in ascending header length
 * (bpftap.compile.slots.assign_session_slots), and mirror_encap walks a rule's
 * sessions in slot order, so each copy needs the same or a longer head.
 */
#ifndef OUTER_BPF_H
#define OUTER_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"
#include "copy.bpf.h"
#include "csum.bpf.h"

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

/*
 * Write the outer headers of session `s`'s copy (`hlen` bytes) in front of
 * the inner frame, growing the head from `*grown` bytes (0: not grown yet;
 * updated as it grows). COPY_GO, or COPY_ENCAP_FAIL.
 */
static __always_inline enum copy_fate
write_outer(struct __sk_buff *skb, const struct mirror_session *s,
	    struct copy_info *ci, __u32 hlen, __u32 *grown)
{
	struct outer_buf b;
	__u32 seq = 0;
	__u64 wlen;

	/* a shorter header than the head has: slots out of order */
	if (hlen < *grown || hlen < TUN_OFF4 || hlen > MIRROR_HDR_MAX)
		return COPY_ENCAP_FAIL;
	if (hlen > *grown) {
		if (grow_head(skb, hlen - *grown, hlen, ci, *grown == 0))
			return COPY_ENCAP_FAIL;
		*grown = hlen;
	}
	if (has_seq(s))
		seq = next_seq(s->stats_id);
	if (s->tunnel == MIRROR_TUN_ERSPAN3 && !(ci->done & COPY_TIME))
		packet_time(skb, ci);
	if ((s->tunnel == MIRROR_TUN_ERSPAN2 ||
	     s->tunnel == MIRROR_TUN_ERSPAN3) &&
	    !(ci->done & COPY_VLAN))
		inner_vlan(skb, ci, hlen);
	if (build_outer(&b, s, ci, seq) != hlen)
		return COPY_ENCAP_FAIL;
	if (s->family == 6 && l4_proto(s) == IPPROTO_UDP &&
	    udp6_csum(skb, &b, ci, hlen))
		return COPY_ENCAP_FAIL;
	/*
	 * hlen was checked above, but Linux 6.1's verifier loses those bounds
	 * where clang reloads hlen from the stack and checks a zero-extended
	 * copy (then "invalid zero-sized read"): a 64-bit length, masked and
	 * checked in the very register the helper gets
	 */
	wlen = hlen;
	barrier_var(wlen);
	wlen &= 0x7f; /* MIRROR_HDR_MAX < 128 */
	if (wlen < TUN_OFF4 || wlen > MIRROR_HDR_MAX)
		return COPY_ENCAP_FAIL;
	if (bpf_skb_store_bytes(skb, 0, b.bytes, wlen, 0))
		return COPY_ENCAP_FAIL;
	return COPY_GO;
}

#endif /* OUTER_BPF_H */
