/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * gso.bpf.h: copies of GSO super-packets, encapsulated whole (mirror_gso,
 * on the egress of the internal device bpftap0, where a clone from stage 1
 * arrives before the device would cut it into segments).
 *
 * Stage 1 gives each GSO session (a rule's gso_sessions: VXLAN, GENEVE,
 * GRE without sequence numbers; no snaplen, sampling or rate limit) a
 * clone of its own when the original is a super-packet, or any TCP frame:
 * a frame that fits the MTU is encapsulated here as it is, so a TCP flow's
 * copies skip the internal pair where they fit. A super-packet's clone
 * grows by the session's outer header with bpf_skb_adjust_room's ENCAP
 * flags, which mark it a tunnel-GSO packet; the outer headers are written
 * once and it is redirected to the session's egress device, where the
 * kernel, or the NIC's tunnel TSO, segments it after encapsulation: one
 * clone and one header write per super-packet instead of per segment.
 *
 * Each segment is a wire frame of the original plus the header when that
 * fits the egress MTU (BPF_F_ADJ_ROOM_FIXED_GSO); else, for `oversize:
 * resegment` sessions, the kernel shrinks gso_size by the header, so every
 * byte arrives in smaller segments and nothing is fragmented. Whatever
 * cannot go this way (no fit, in-band or accelerated VLAN tags, not TCP,
 * a per-packet budget, redirect_chain: false, a refusal of adjust_room)
 * leaves untouched with GSO_SLOW: bpftap0 segments it and stage 2 copies
 * each segment as before.
 */
#ifndef GSO_BPF_H
#define GSO_BPF_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"
#include "limits.bpf.h"
#include "copy.bpf.h"
#include "outer.bpf.h"

/* mirror_gso's verdicts: on through bpftap0 (segmented, stage 2), sent, dropped */
#define GSO_SLOW TC_ACT_OK
#define GSO_SENT TC_ACT_REDIRECT
#define GSO_DROP TC_ACT_SHOT

/* a resegmented copy keeps at least this much payload per segment */
#define GSO_MIN_SEG 256

/*
 * Bytes of the frame before the TCP payload (Ethernet, IPv4 with options
 * or IPv6 without extension headers, TCP with options): what every
 * segment repeats. 0 for anything else.
 */
static __always_inline __u32 gso_hdr_len(struct __sk_buff *skb)
{
	__u8 ip[ETH_HLEN + 10], doff;
	__u32 l3;

	if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP) &&
	    ip[12] == 0x08 && ip[13] == 0x00 && ip[ETH_HLEN + 9] == IPPROTO_TCP)
		l3 = (ip[ETH_HLEN] & 0x0f) * 4;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6) && ip[12] == 0x86 &&
		 ip[13] == 0xdd && ip[ETH_HLEN + 6] == IPPROTO_TCP)
		l3 = 40;
	else
		return 0;
	if (l3 < 20 || l3 > 60 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + l3 + 12, &doff, 1))
		return 0;
	if ((doff >> 4) < 5)
		return 0;
	return ETH_HLEN + l3 + (doff >> 4) * 4;
}

/*
 * Whether the linear part holds payload beyond the headers: a packet GRO
 * built from such skbs (a veth with GRO, a non-SG sender) carries them in a
 * frag_list, and shrinking a frag_list packet's gso_size hit a BUG_ON in
 * skb_segment until the 2024 fix "bpf: Linearize skb when downgrading
 * gso_size". Such packets are never resegmented here, on any kernel. A
 * read of the data pointers, not a write: no un-clone prologue.
 */
static __always_inline int payload_in_head(struct __sk_buff *skb, __u32 hdrs)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (hdrs > 256)
		return 1;
	return data + hdrs < end;
}

/*
 * One session's copy of the super-packet or TCP frame in `skb` (a clone
 * for it alone), the session at `slot` of `sessions`. Returns GSO_SENT
 * (redirected), GSO_SLOW (untouched: the per-segment path takes it) or
 * GSO_DROP (counted in the session's stats).
 */
__noinline int gso_copy(struct __sk_buff *skb, __u32 slot)
{
	__u32 k = 0, hlen, hdrs = 0, size, segs, seg_len, seq = 0;
	struct mirror_config *cfg;
	struct session_stats *ss;
	struct mirror_session *s;
	struct copy_info *ci;
	struct outer_buf b;
	__u8 eth[ETH_HLEN];
	__u64 flags;

	ci = bpf_map_lookup_elem(&copy_scratch, &k);
	cfg = bpf_map_lookup_elem(&config, &k);
	s = bpf_map_lookup_elem(&sessions, &slot);
	if (!skb || !ci || !cfg || !s)
		goto slow;
	k = s->stats_id;
	ss = bpf_map_lookup_elem(&session_stats, &k);
	if (!ss)
		goto slow;
	/*
	 * per-packet limits count wire frames: they stay exact on the slow
	 * path; so does redirect_chain: false (this path redirects a clone)
	 */
	if (!s->ifindex || s->sample > 1 || s->rate_pps || s->rate_bps ||
	    cfg->budget_pps || cfg->ring_copies || skb->vlan_present)
		goto slow;
	size = skb->gso_size;
	hlen = s->hdr_len;
	if (hlen < TUN_OFF4 || hlen > MIRROR_HDR_MAX)
		goto slow;
	flags = (s->family == 6 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
				: BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) |
		(l4_proto(s) == IPPROTO_UDP ? BPF_F_ADJ_ROOM_ENCAP_L4_UDP
					    : BPF_F_ADJ_ROOM_ENCAP_L4_GRE) |
		BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN) | BPF_F_ADJ_ROOM_ENCAP_L2_ETH;
	if (!size) {
		/* a frame of a TCP flow goes whole too, if it fits */
		segs = 1;
		if (hlen - ETH_HLEN + skb->len > s->mtu)
			goto slow;
	} else {
		hdrs = gso_hdr_len(skb);
		if (!hdrs)
			goto slow;
		segs = (skb->len - hdrs + size - 1) / size;
		/* the outer IP length of one segment as it is, and resegmented */
		seg_len = hlen - ETH_HLEN + hdrs + size;
		if (seg_len <= s->mtu) {
			flags |= BPF_F_ADJ_ROOM_FIXED_GSO;
		} else if (!(s->flags & MIRROR_SF_RESEGMENT) ||
			   seg_len - hlen > s->mtu || size < hlen + GSO_MIN_SEG ||
			   payload_in_head(skb, hdrs)) {
			goto slow;
		} else {
			/* gso_size shrinks by the header: segments of the original's size */
			segs = (skb->len - hdrs + size - hlen - 1) / (size - hlen);
		}
	}
	if (shed_copy(s, skb->len + segs * hlen, segs)) {
		ss->shed += segs;
		count_n(MS_SHED, segs);
		return GSO_DROP;
	}
	/* what the outer headers need to know; lengths are fixed per segment */
	copy_source(skb, ci);
	ci->inner_len = skb->len < 0xffff - hlen ? skb->len : 0xffff - hlen;
	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(eth)))
		goto slow;
	if (bpf_skb_adjust_room(skb, hlen, BPF_ADJ_ROOM_MAC, flags))
		goto slow;
	/* from here on the clone is ours: a failure drops it, counted */
	if (has_seq(s))
		seq = next_seq(s->stats_id);
	barrier_var(hlen);
	if (hlen < TUN_OFF4 || hlen > MIRROR_HDR_MAX ||
	    build_outer(&b, s, ci, seq) != hlen ||
	    bpf_skb_store_bytes(skb, 0, b.bytes, hlen, 0) ||
	    bpf_skb_store_bytes(skb, hlen, eth, sizeof(eth), 0)) {
		ss->encap_fail += 1;
		count(MS_ENCAP_FAIL);
		return GSO_DROP;
	}
	skb->mark = MIRROR_COPY_MARK;
	ss->packets += segs;
	ss->bytes += skb->len + (segs - 1) * (hlen + hdrs);
	count_n(MS_COPY_SENT, segs);
	if (size) {
		ss->gso += 1;
		count(MS_GSO_SENT);
	}
	bpf_redirect(s->ifindex, 0);
	return GSO_SENT;
slow:
	if (skb && skb->gso_size)
		count(MS_GSO_SLOW);
	return GSO_SLOW;
}

#endif /* GSO_BPF_H */
