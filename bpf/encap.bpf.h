/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * encap.bpf.h: stage 2's one copy for one session, encap_one(): grow the
 * head to the session's header length, write the outer headers built by
 * tunnels.bpf.h, and send. What all copies of a packet share is in
 * copy.bpf.h, the checksums in csum.bpf.h, the head and sequence numbers in
 * outer.bpf.h; limits.bpf.h admits copies, fragment.bpf.h and ring.bpf.h
 * send the ones that do not leave by redirect.
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

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"
#include "limits.bpf.h"
#include "copy.bpf.h"
#include "csum.bpf.h"
#include "outer.bpf.h"
#include "fragment.bpf.h"
#include "ring.bpf.h"

/* encap_one()'s answer when the copy left with bpf_redirect */
#define ENCAP_REDIRECTED 0x10000

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
		log_event(MIRROR_LOG_INFO, MIRROR_EV_SHED, ci->ifindex,
			  ci->rule, s->stats_id + 1, s->priority, 0);
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

#endif /* ENCAP_BPF_H */
