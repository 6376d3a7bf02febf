/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * encap.bpf.h: stage 2's work on the skb. prepare_copy() gathers what
 * every copy of a packet shares; encap_one() makes one session's copy:
 * grow the head to the session's header length, write the outer headers
 * built by tunnels.bpf.h, and send.
 *
 * The head only ever grows: shrinking (bpf_skb_adjust_room) would cut the
 * inner frame. The daemon gives session slots in ascending header length
 * (bpftap.rules.assign_session_slots), and mirror_encap walks a rule's
 * sessions in slot order, so each copy needs the same or a longer head.
 *
 * encap_one() and frame_sum() are global functions: the verifier checks
 * each once with unknown arguments, instead of once per session of the
 * loop and per tunnel type, which keeps the loop's cost linear.
 */
#ifndef ENCAP_BPF_H
#define ENCAP_BPF_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"
#include "limits.bpf.h"
#include "fragment.bpf.h"
#include "ring.bpf.h"

/* encap_one()'s answer when the copy left with bpf_redirect */
#define ENCAP_REDIRECTED 0x10000

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

/*
 * What all copies of this packet share, into `ci` (`ring`: they go to
 * `copies`, not redirected). Returns 0, -1 for more tags than
 * MAX_VLAN_TAGS, -2 if the frame cannot be read. What only some
 * tunnels need (time, VLAN, checksum) is filled on first use.
 */
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

static __always_inline int prepare_copy(struct __sk_buff *skb,
					struct copy_info *ci, __u8 ring)
{
	int ntags;

	copy_source(skb, ci);
	ci->csum = 0;
	ci->done = 0;
	ci->ring = ring;
	__builtin_memset(&ci->l2, 0, sizeof(ci->l2));
	ntags = take_vlan_tags(skb, &ci->l2);
	if (ntags < 0)
		return -1;
	ci->ntags = ntags;
	if (bpf_skb_load_bytes(skb, 0, ci->l2.macs, sizeof(ci->l2.macs)))
		return -2;
	ci->inner_len = skb->len + ntags * sizeof(struct vlan_ins);
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
	return bpf_skb_store_bytes(skb, hlen, &ci->l2,
				   2 * ETH_ALEN + ntags * sizeof(struct vlan_ins),
				   0);
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/*
 * Ones' complement sum of `len` bytes of the packet from `off`, folded to
 * 16 bits, or -1 if they cannot be read. csum_diff works on 4-byte words:
 * a tail is padded with zeroes, which add nothing.
 */
__noinline int frame_sum(struct __sk_buff *skb, __u32 off, __u32 len)
{
	struct csum_chunk *c;
	__u32 k = 0, n, words;
	__u64 sum = 0;

	c = bpf_map_lookup_elem(&csum_scratch, &k);
	if (!c)
		return -1;
	for (int i = 0; i < CSUM_CHUNKS && len; i++) {
		if (len >= CSUM_CHUNK) {
			if (bpf_skb_load_bytes(skb, off, c->bytes, CSUM_CHUNK))
				return -1;
			sum = bpf_csum_diff(NULL, 0, (__be32 *)c->bytes,
					    CSUM_CHUNK, (__u32)sum);
			off += CSUM_CHUNK;
			len -= CSUM_CHUNK;
			continue;
		}
		/* the tail: 1..CSUM_CHUNK-1 bytes, in words padded with zero */
		n = ((len - 1) & (CSUM_CHUNK - 1)) + 1;
		words = (n + 3) / 4;
		barrier_var(words);
		if (words > CSUM_CHUNK / 4)
			return -1;
		*(__u32 *)(c->bytes + (n & (CSUM_CHUNK - 4))) = 0;
		if (bpf_skb_load_bytes(skb, off, c->bytes, n))
			return -1;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)c->bytes, words * 4,
				    (__u32)sum);
		len = 0;
	}
	return len ? -1 : csum_fold(sum);
}

/* IPv6 pseudo-header for the UDP checksum (RFC 8200 section 8.1) */
struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__be32 nexthdr;
};

/*
 * Fill the outer UDP checksum of an IPv6 copy in `b` (`hlen` bytes, head
 * grown to hlen): pseudo-header, UDP and tunnel header, inner frame (its
 * sum computed once per packet). A zero result goes out as 0xffff.
 */
static __always_inline int udp6_csum(struct __sk_buff *skb,
				     struct outer_buf *b,
				     struct copy_info *ci, __u32 hlen)
{
	struct pseudo6 ph = {};
	__u32 tlen = hlen - TUN_OFF6;
	__u64 sum;
	__u16 check;
	int inner;

	if (tlen < UDP_HLEN || tlen > MIRROR_HDR_MAX - TUN_OFF6)
		return -1;
	if (!(ci->done & COPY_CSUM)) {
		inner = frame_sum(skb, hlen, ci->inner_len);
		if (inner < 0)
			return -1;
		ci->csum = inner;
		ci->done |= COPY_CSUM;
	}
	__builtin_memcpy(&ph, b->bytes + L3_OFF + 8, 32);
	ph.len = bpf_htonl(tlen + ci->inner_len);
	ph.nexthdr = bpf_htonl(IPPROTO_UDP);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)(b->bytes + TUN_OFF6),
			    tlen & ~3U, (__u32)sum);
	check = ~csum_fold(sum + ci->csum);
	*(__u16 *)(b->bytes + TUN_OFF6 + 6) = check ? check : 0xffff;
	return 0;
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
 * One copy for the session at `slot` (rule slot * MAX_SESSIONS + session
 * slot, the `sessions` key); the head is `grown` bytes long so
 * far (0: not grown). `last` sends the skb itself with bpf_redirect.
 * Returns the head length now, or ENCAP_REDIRECTED. Every copy not sent
 * is counted in the session's stats and the global ones.
 */
__noinline int encap_one(struct __sk_buff *skb, __u32 slot, __u32 grown,
			 __u32 last)
{
	struct session_stats *ss;
	struct mirror_session *s;
	struct copy_info *ci;
	struct outer_buf b;
	__u32 k = 0, hlen, seq = 0, nfrag = 0;
	__u64 wlen;
	int ret;

	ci = bpf_map_lookup_elem(&copy_scratch, &k);
	s = bpf_map_lookup_elem(&sessions, &slot);
	if (!ci || !s)
		return grown;
	k = s->stats_id;
	ss = bpf_map_lookup_elem(&session_stats, &k);
	if (!ss)
		return grown;
	if (!s->ifindex) {
		ss->unresolved += 1;
		count(MS_UNRESOLVED);
		log_event(MIRROR_LOG_WARN, MIRROR_EV_UNRESOLVED, ci->ifindex,
			  ci->rule, s->stats_id + 1, 0, 0);
		return grown;
	}
	hlen = s->hdr_len;
	/* over the MTU: sent as outer fragments, if it takes few enough
	 * (only by redirecting: with `copies`, oversize) */
	if (hlen - ETH_HLEN + ci->inner_len > s->mtu && !ci->ring)
		nfrag = frag_count(s, hlen - ETH_HLEN + ci->inner_len);
	if (hlen - ETH_HLEN + ci->inner_len > s->mtu && !nfrag) {
		ss->oversize += 1;
		count(MS_OVERSIZE);
		log_event(MIRROR_LOG_WARN, MIRROR_EV_OVERSIZE, ci->ifindex,
			  ci->rule, s->stats_id + 1,
			  hlen - ETH_HLEN + ci->inner_len, s->mtu);
		return grown;
	}
	if (sampled_out(s)) {
		ss->sampled_out += 1;
		count(MS_SAMPLED_OUT);
		return grown;
	}
	if (over_rate(s->stats_id, s->rate_pps, s->rate_bps,
		      hlen + ci->inner_len, 0)) {
		ss->rate_limited += 1;
		count(MS_RATE_LIMITED);
		log_event(MIRROR_LOG_INFO, MIRROR_EV_RATE_LIMITED, ci->ifindex,
			  ci->rule, s->stats_id + 1, 0, 0);
		return grown;
	}
	if (shed_copy(s, hlen + ci->inner_len, nfrag ? nfrag : 1)) {
		ss->shed += 1;
		count(MS_SHED);
		log_event(MIRROR_LOG_INFO, MIRROR_EV_SHED, ci->ifindex, ci->rule,
			  s->stats_id + 1, s->priority, 0);
		return grown;
	}
	/* a shorter header than the head has: slots out of order */
	if (hlen < grown || hlen < TUN_OFF4 || hlen > MIRROR_HDR_MAX)
		goto fail;
	if (hlen > grown) {
		if (grow_head(skb, hlen - grown, hlen, ci, grown == 0))
			goto fail;
		grown = hlen;
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
		goto fail;
	if (s->family == 6 && l4_proto(s) == IPPROTO_UDP &&
	    udp6_csum(skb, &b, ci, hlen))
		goto fail;
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
		goto fail;
	if (bpf_skb_store_bytes(skb, 0, b.bytes, wlen, 0))
		goto fail;
	if (ci->ring) {
		/* to the daemon: nothing is redirected a second time */
		ret = ring_copy(skb, s->ifindex);
		if (ret == -2) {
			ss->ring_full += 1;
			count(MS_RING_FULL);
			return grown;
		}
		if (ret == -1) {
			ss->oversize += 1;
			count(MS_OVERSIZE);
			return grown;
		}
		if (ret)
			goto fail;
		goto sent;
	}
	if (nfrag) {
		/* as fragments, clones all (the skb, if last, is dropped) */
		if (hand_fragments(skb, slot, nfrag, next_frag_ident()))
			goto fail;
		ss->packets += 1;
		ss->bytes += skb->len;
		ss->truncated += ci->truncated;
		count(MS_COPY_SENT);
		return grown;
	}
	if (!last && bpf_clone_redirect(skb, s->ifindex, 0))
		goto fail;
sent:
	ss->packets += 1;
	ss->bytes += skb->len;
	ss->truncated += ci->truncated;
	count(MS_COPY_SENT);
	if (!last || ci->ring)
		return grown;
	/* the last copy of all goes with the skb itself */
	bpf_redirect(s->ifindex, 0);
	return ENCAP_REDIRECTED;
fail:
	dbg("bpftap: copy for session key %u failed", slot);
	log_event(MIRROR_LOG_ERROR, MIRROR_EV_ENCAP_FAIL, ci->ifindex, ci->rule,
		  s->stats_id + 1, hlen, 0);
	ss->encap_fail += 1;
	count(MS_ENCAP_FAIL);
	return grown;
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
		sum ^= ((__u32)(p.sport ^ p.dport) << 16) | (__u16)(p.sport + p.dport);
	return fmix32(sum ^ ((mix << 13) | (mix >> 19)) ^ p.proto);
}

/* the member of a collector group at `slot` that takes this flow */
static __always_inline __u32 group_member(__u32 slot, __u32 hash)
{
	__u32 k = slot * GROUP_BUCKETS + (hash & (GROUP_BUCKETS - 1));
	__u32 *member = bpf_map_lookup_elem(&group_buckets, &k);

	return member ? *member : 0;
}

#endif /* ENCAP_BPF_H */
