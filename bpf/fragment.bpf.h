/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fragment.bpf.h: copies larger than the egress MTU (`oversize: fragment`,
 * the default) leave as outer IPv4 fragments (DF clear) or IPv6 packets
 * with a fragment header, which the collector's normal reassembly puts
 * back together. No GPL-only helper: the MTU is the session's, kept by
 * the daemon from the egress route.
 *
 * The slow path: encap_one() writes the whole copy; send_copy() gives it an
 * identification, then sends one clone per fragment (hand_fragments)
 * with FRAG_TAG, the session and the fragment's index in the mark, back
 * across the internal pair: out of bpftap1, where stage 1's clones come
 * in, into bpftap0, whose ingress runs mirror_encap too. Each cuts its
 * clone down to its fragment and sends it (send_fragment). The clones
 * wait in bpftap0's own ring (see mirror_napi), apart from stage 1's: if
 * the slow path falls behind, that ring drops copies (counted as
 * bpftap1's tx drops), never originals.
 *
 * Only copies over the MTU take it; the ones that fit are sent as before.
 */
#ifndef FRAGMENT_BPF_H
#define FRAGMENT_BPF_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"

#define IP_MF 0x2000
#define IP6_MF 0x0001
#define NEXTHDR_FRAGMENT 44

/* bpf_skb_adjust_room moves at most 0xfff bytes a call */
#define CUT_CHUNK 4088
#define CUT_CHUNKS 17 /* 64 KiB */

/* the IPv6 fragment header (RFC 8200 section 4.5) */
struct frag6 {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, M flag in bit 0 */
	__be32 ident;
};

/* outer L3 header bytes of a fragment of the session's copies */
static __always_inline __u32 frag_l3_len(const struct mirror_session *s)
{
	return s->family == 6 ? sizeof(struct ipv6hdr) + sizeof(struct frag6)
			      : sizeof(struct iphdr);
}

/* payload bytes per fragment: what fits the MTU, a multiple of 8; 0: none */
static __always_inline __u32 frag_size(const struct mirror_session *s)
{
	__u32 l3 = frag_l3_len(s);

	return s->mtu >= l3 + 8 ? (s->mtu - l3) & ~7U : 0;
}

/*
 * Fragments a copy of `l3_len` outer IP bytes (header included, no
 * fragment header) needs, or 0 if more than MAX_FRAGS or the MTU is too
 * small for any.
 */
static __always_inline __u32 frag_count(const struct mirror_session *s,
					__u32 l3_len)
{
	__u32 fsize = frag_size(s), hl, n;

	hl = s->family == 6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	if (!fsize || l3_len <= hl)
		return 0;
	n = (l3_len - hl + fsize - 1) / fsize;
	return n <= MAX_FRAGS ? n : 0;
}

/* the identification of the next fragmented copy, for all CPUs */
static __always_inline __u32 next_frag_ident(void)
{
	struct frag_ident *f;
	__u32 k = 0, ident;

	f = bpf_map_lookup_elem(&frag_ident, &k);
	if (!f)
		return 0;
	bpf_spin_lock(&f->lock);
	ident = ++f->next;
	bpf_spin_unlock(&f->lock);
	return ident;
}

/*
 * The whole copy is written (outer headers at 0, for the session at
 * `slot`): give it `ident` and send `nfrag` clones of it across the
 * internal pair, one per fragment. They wait in the ring back to back, so
 * the fragments of a copy leave together: a Linux receiver drops a
 * datagram whose fragments arrive more than ipfrag_max_dist (64) other
 * fragments from the same source apart (sending one fragment in place,
 * ahead of the others, was measured to trip it). The IPv4 identification
 * goes into the header (DF clear); the IPv6 one waits in the outer source
 * MAC until send_fragment builds the fragment header (and writes the MAC
 * back).
 * Returns the clones the kernel refused (its ring full: the slow path is
 * behind). A global function: verified once.
 */
__noinline __u32 hand_fragments(struct __sk_buff *skb, __u32 slot, __u32 nfrag,
				__u32 ident)
{
	struct mirror_session *s;
	__u32 mark, failed = 0;
	struct iphdr ip;
	__be32 id6;

	s = bpf_map_lookup_elem(&sessions, &slot);
	if (!skb || !s)
		return nfrag;
	if (s->family == 4) {
		if (bpf_skb_load_bytes(skb, L3_OFF, &ip, sizeof(ip)))
			return nfrag;
		ip.id = bpf_htons(ident);
		ip.frag_off = 0;
		ip.check = 0;
		ip.check = ipv4_csum(&ip);
		if (bpf_skb_store_bytes(skb, L3_OFF, &ip, sizeof(ip), 0))
			return nfrag;
	} else {
		id6 = bpf_htonl(ident);
		if (bpf_skb_store_bytes(skb, ETH_ALEN, &id6, sizeof(id6), 0))
			return nfrag;
	}
	mark = skb->mark;
	/* the hash picks the pair's queue: one copy's fragments share one, copies spread */
	bpf_set_hash(skb, ident);
	for (__u32 i = 0; i < MAX_FRAGS && i < nfrag; i++) {
		skb->mark = FRAG_TAG | (slot << FRAG_SLOT_SHIFT) | i;
		/* out of the device this runs on, into its peer */
		if (bpf_clone_redirect(skb, skb->ifindex, 0))
			failed++;
	}
	skb->mark = mark;
	return failed;
}

/* remove `len` bytes right after the outer L3 header */
static __always_inline int cut_after_l3(struct __sk_buff *skb, __u32 len)
{
	for (int i = 0; i < CUT_CHUNKS && len; i++) {
		__u32 chunk = len > CUT_CHUNK ? CUT_CHUNK : len;

		if (bpf_skb_adjust_room(skb, -(__s32)chunk, BPF_ADJ_ROOM_NET, 0))
			return -1;
		len -= chunk;
	}
	return len ? -1 : 0;
}

/*
 * A clone from hand_fragments on the pair's other end (the kernel has
 * parsed its outer Ethernet and IP headers): keep the fragment its mark
 * names, fix the outer headers, send it. A global function: verified once.
 */
__noinline int send_fragment(struct __sk_buff *skb)
{
	struct session_stats *ss;
	struct mirror_session *s;
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct iphdr ip;
	struct frag6 fh;
	__u32 slot, idx, k, fsize, hl, payload, off, len, more;

	if (!skb)
		goto no_entry;
	slot = (skb->mark & FRAG_SLOT_MASK) >> FRAG_SLOT_SHIFT;
	idx = skb->mark & FRAG_INDEX_MASK;
	s = bpf_map_lookup_elem(&sessions, &slot);
	if (!s)
		goto no_entry;
	k = s->stats_id;
	ss = bpf_map_lookup_elem(&session_stats, &k);
	if (!ss)
		goto no_entry;
	hl = s->family == 6 ? sizeof(ip6) : sizeof(ip);
	fsize = frag_size(s);
	if (!fsize || !s->ifindex || idx >= MAX_FRAGS ||
	    skb->len <= ETH_HLEN + hl)
		goto fail;
	payload = skb->len - ETH_HLEN - hl;
	off = idx * fsize;
	if (off >= payload)
		goto fail;
	len = payload - off < fsize ? payload - off : fsize;
	more = off + len < payload;
	if (cut_after_l3(skb, off))
		goto fail;
	if (s->family == 4) {
		if (bpf_skb_load_bytes(skb, L3_OFF, &ip, sizeof(ip)) ||
		    bpf_skb_change_tail(skb, ETH_HLEN + hl + len, 0))
			goto fail;
		ip.tot_len = bpf_htons(hl + len);
		ip.frag_off = bpf_htons((off >> 3) | (more ? IP_MF : 0));
		ip.check = 0;
		ip.check = ipv4_csum(&ip);
		if (bpf_skb_store_bytes(skb, L3_OFF, &ip, sizeof(ip), 0))
			goto fail;
		fill_eth(&eth, s, ETH_P_IP);
	} else {
		if (bpf_skb_load_bytes(skb, L3_OFF, &ip6, sizeof(ip6)) ||
		    bpf_skb_load_bytes(skb, ETH_ALEN, &fh.ident, sizeof(fh.ident)) ||
		    bpf_skb_change_tail(skb, ETH_HLEN + hl + len, 0) ||
		    bpf_skb_adjust_room(skb, sizeof(fh), BPF_ADJ_ROOM_NET, 0))
			goto fail;
		fh.nexthdr = ip6.nexthdr;
		fh.reserved = 0;
		fh.frag_off = bpf_htons(off | (more ? IP6_MF : 0));
		ip6.nexthdr = NEXTHDR_FRAGMENT;
		ip6.payload_len = bpf_htons(sizeof(fh) + len);
		if (bpf_skb_store_bytes(skb, L3_OFF, &ip6, sizeof(ip6), 0) ||
		    bpf_skb_store_bytes(skb, L3_OFF + hl, &fh, sizeof(fh), 0))
			goto fail;
		fill_eth(&eth, s, ETH_P_IPV6);
	}
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		goto fail;
	skb->mark = MIRROR_COPY_MARK;
	ss->fragments += 1;
	count(MS_FRAGMENTS);
	return bpf_redirect(s->ifindex, 0);
fail:
	ss->encap_fail += 1;
	count(MS_ENCAP_FAIL);
	log_event(MIRROR_LOG_ERROR, MIRROR_EV_FRAG_FAIL, 0, 0, s->stats_id + 1,
		  idx, s->mtu);
	return TC_ACT_SHOT;
no_entry:
	count(MS_NO_ENTRY);
	return TC_ACT_SHOT;
}

#endif /* FRAGMENT_BPF_H */
