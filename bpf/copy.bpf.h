/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * copy.bpf.h: stage 2, what every copy of one packet shares (struct
 * copy_info in `copy_scratch`, filled once per packet by mirror_encap):
 * the source that stage 1's mark names, the accelerated VLAN tags taken
 * off to go back inside the inner frame, the cut to a session's snaplen;
 * and what only some tunnels need, filled on first use: the packet's time
 * (the clock, ERSPAN III) and the inner frame's outermost tag (ERSPAN).
 */
#ifndef COPY_BPF_H
#define COPY_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"

/* prepare_copy()'s answer: the packet's copies can be made, or why not */
enum prep_result {
	PREP_OK = 0,
	PREP_VLAN_DEPTH = -1, /* more accelerated tags than MAX_VLAN_TAGS */
	PREP_UNREADABLE = -2, /* the frame's addresses cannot be read */
};

/*
 * What became of one session's copy of a packet. Each step of encap_one()
 * (admit, write the outer headers, send) answers COPY_GO to go on, or the
 * copy's fate; count_copy() counts each fate once, in the session's stats
 * and the global ones.
 */
enum copy_fate {
	COPY_GO = 0,	   /* not decided yet: the next step */
	COPY_SENT,	   /* cloned, fragmented or put in `copies` */
	COPY_REDIRECTED,   /* the last copy: the skb itself, bpf_redirect */
	COPY_UNRESOLVED,   /* the session has no next hop yet */
	COPY_OVERSIZE,	   /* over the egress MTU, and no fragments */
	COPY_TOO_LONG,	   /* longer than `copies` takes (counted oversize) */
	COPY_SAMPLED_OUT,  /* not the 1 in the session's sample */
	COPY_RATE_LIMITED, /* over the session's rate limit */
	COPY_SHED,	   /* over the copy budget or its link's room */
	COPY_RING_FULL,	   /* `copies` full */
	COPY_ENCAP_FAIL,   /* growing, writing or sending it failed */
};

/*
 * Accelerated tags live beside the frame (skb->vlan_tci); a copy must carry
 * them inside the inner frame, so pop them (outer first) and keep them.
 */
static __always_inline int take_vlan_tags(struct __sk_buff *skb,
					  struct inner_l2 *l2)
{
	int n = 0;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (!skb->vlan_present)
			break;
		l2->tags[i].proto = (__be16)skb->vlan_proto;
		l2->tags[i].tci = bpf_htons(skb->vlan_tci);
		if (bpf_skb_vlan_pop(skb))
			return -1;
		n++;
	}
	if (skb->vlan_present)
		return -1;
	return n;
}

/* what stage 1's mark and the frame say of the copy's source: flow, direction, interface */
static __always_inline void copy_source(struct __sk_buff *skb,
					struct copy_info *ci)
{
	__u32 sid, *ifindex;

	ci->hash = bpf_get_hash_recalc(skb);
	ci->dir = skb->mark & XFER_EGRESS ? MIRROR_DIR_EGRESS
					  : MIRROR_DIR_INGRESS;
	/* the source interface, from the id stage 1 put in the mark */
	sid = (skb->mark & XFER_SOURCE_MASK) >> XFER_SOURCE_SHIFT;
	ifindex = sid ? bpf_map_lookup_elem(&source_ifindexes, &sid) : NULL;
	ci->ifindex = ifindex ? *ifindex : 0;
}

/*
 * What all copies of this packet share, into `ci` (`ring`: they go to
 * `copies`, not redirected). Returns an enum prep_result. What only some
 * tunnels need (time, VLAN, checksum) is filled on first use.
 */
static __always_inline enum prep_result
prepare_copy(struct __sk_buff *skb, struct copy_info *ci, __u8 ring)
{
	int ntags;

	copy_source(skb, ci);
	ci->csum = 0;
	ci->done = 0;
	ci->ring = ring;
	__builtin_memset(&ci->l2, 0, sizeof(ci->l2));
	ntags = take_vlan_tags(skb, &ci->l2);
	if (ntags < 0)
		return PREP_VLAN_DEPTH;
	ci->ntags = ntags;
	if (bpf_skb_load_bytes(skb, 0, ci->l2.macs, sizeof(ci->l2.macs)))
		return PREP_UNREADABLE;
	ci->inner_len = skb->len + ntags * sizeof(struct vlan_ins);
	return PREP_OK;
}

/*
 * Cut the inner frame to the snaplen of the session at `slot` (before any
 * head growth: the frame starts at offset 0), counting the accelerated
 * tags that will be put back. Returns non-zero if the kernel refused.
 */
static __always_inline int truncate(struct __sk_buff *skb, struct copy_info *ci,
				    __u32 slot)
{
	struct mirror_session *s = bpf_map_lookup_elem(&sessions, &slot);
	__u32 tags, keep;

	if (!s || !s->snaplen || ci->inner_len <= s->snaplen)
		return 0;
	tags = ci->ntags * sizeof(struct vlan_ins);
	keep = s->snaplen > tags + ETH_HLEN ? s->snaplen - tags : ETH_HLEN;
	if (bpf_skb_change_tail(skb, keep, 0))
		return -1;
	ci->inner_len = skb->len + tags;
	ci->truncated = 1;
	return 0;
}

/*
 * The packet's time, for ERSPAN III: at tc ingress a non-zero tstamp is
 * its receive time (realtime); else now, from the monotonic clock and the
 * realtime offset the daemon keeps in `clock`.
 */
static __always_inline void packet_time(struct __sk_buff *skb,
					struct copy_info *ci)
{
	struct mirror_clock *clk;
	__u32 k = 0;

	ci->tstamp = skb->tstamp;
	if (!ci->tstamp) {
		clk = bpf_map_lookup_elem(&clock, &k);
		ci->tstamp = bpf_ktime_get_ns() +
			     (clk ? clk->realtime_offset_ns : 0);
	}
	ci->done |= COPY_TIME;
}

/* the inner frame's outermost tag (at `off` once the head is grown), for ERSPAN */
static __always_inline void inner_vlan(struct __sk_buff *skb,
				       struct copy_info *ci, __u32 off)
{
	__be16 tag[2];

	ci->tagged = 0;
	ci->vlan_tci = 0;
	if (!bpf_skb_load_bytes(skb, off + 2 * ETH_ALEN, tag, sizeof(tag)) &&
	    (tag[0] == bpf_htons(VLAN_TPID_8021Q) ||
	     tag[0] == bpf_htons(VLAN_TPID_8021AD))) {
		ci->tagged = 1;
		ci->vlan_tci = bpf_ntohs(tag[1]);
	}
	ci->done |= COPY_VLAN;
}

#endif /* COPY_BPF_H */
