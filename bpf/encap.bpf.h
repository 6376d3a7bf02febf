/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * encap.bpf.h: stage 2's one copy for one session, encap_one(): admit it
 * (admit.bpf.h), write its outer headers (outer.bpf.h), send it
 * (send.bpf.h); each step answers COPY_GO or the copy's fate, and
 * count_copy() counts that fate once. What all copies of a packet share is
 * prepared once beforehand (copy.bpf.h).
 *
 * encap_one() is a global function, like frame_sum(): the verifier checks
 * it once with unknown arguments, instead of once per session of the loop
 * and per tunnel type, which keeps the loop's cost linear.
 */
#ifndef ENCAP_BPF_H
#define ENCAP_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "copy.bpf.h"
#include "admit.bpf.h"
#include "outer.bpf.h"
#include "send.bpf.h"

/* encap_one()'s answer when the copy left with bpf_redirect */
#define ENCAP_REDIRECTED 0x10000

/*
 * Count the fate of session `s`'s copy (`hlen` outer header bytes; `slot`
 * for the debug log) in the session's stats and the global ones, and log
 * the ones the agent reports.
 */
static __always_inline void
count_copy(enum copy_fate fate, struct __sk_buff *skb, struct session_stats *ss,
	   const struct mirror_session *s, const struct copy_info *ci,
	   __u32 hlen, __u32 slot)
{
	switch (fate) {
	case COPY_SENT:
	case COPY_REDIRECTED:
		ss->packets += 1;
		ss->bytes += skb->len;
		ss->truncated += ci->truncated;
		count(MS_COPY_SENT);
		return;
	case COPY_UNRESOLVED:
		ss->unresolved += 1;
		count(MS_UNRESOLVED);
		log_event(MIRROR_LOG_WARN, MIRROR_EV_UNRESOLVED, ci->ifindex,
			  ci->rule, s->stats_id + 1, 0, 0);
		return;
	case COPY_OVERSIZE:
		ss->oversize += 1;
		count(MS_OVERSIZE);
		log_event(MIRROR_LOG_WARN, MIRROR_EV_OVERSIZE, ci->ifindex,
			  ci->rule, s->stats_id + 1,
			  hlen - ETH_HLEN + ci->inner_len, s->mtu);
		return;
	case COPY_TOO_LONG:
		ss->oversize += 1;
		count(MS_OVERSIZE);
		return;
	case COPY_SAMPLED_OUT:
		ss->sampled_out += 1;
		count(MS_SAMPLED_OUT);
		return;
	case COPY_RATE_LIMITED:
		ss->rate_limited += 1;
		count(MS_RATE_LIMITED);
		log_event(MIRROR_LOG_INFO, MIRROR_EV_RATE_LIMITED, ci->ifindex,
			  ci->rule, s->stats_id + 1, 0, 0);
		return;
	case COPY_SHED:
		ss->shed += 1;
		count(MS_SHED);
		log_event(MIRROR_LOG_INFO, MIRROR_EV_SHED, ci->ifindex,
			  ci->rule, s->stats_id + 1, s->priority, 0);
		return;
	case COPY_RING_FULL:
		ss->ring_full += 1;
		count(MS_RING_FULL);
		return;
	case COPY_GO: /* not a fate: no step ends with it */
	case COPY_ENCAP_FAIL:
	default:
		dbg("bpftap: copy for session key %u failed", slot);
		log_event(MIRROR_LOG_ERROR, MIRROR_EV_ENCAP_FAIL, ci->ifindex,
			  ci->rule, s->stats_id + 1, hlen, 0);
		ss->encap_fail += 1;
		count(MS_ENCAP_FAIL);
		return;
	}
}

/*
 * One copy for the session at `slot` (rule slot * MAX_SESSIONS + session
 * slot, the `sessions` key); the head is `grown` bytes long so far (0: not
 * grown). `last` sends the skb itself with bpf_redirect. Returns the head
 * length now, or ENCAP_REDIRECTED. Every copy is counted once, sent or not.
 */
__noinline int encap_one(struct __sk_buff *skb, __u32 slot, __u32 grown,
			 __u32 last)
{
	struct session_stats *ss;
	struct mirror_session *s;
	struct copy_info *ci;
	__u32 k = 0, hlen, nfrag = 0;
	enum copy_fate fate;

	ci = bpf_map_lookup_elem(&copy_scratch, &k);
	s = bpf_map_lookup_elem(&sessions, &slot);
	if (!ci || !s) {
		count(MS_NO_ENTRY);
		return grown;
	}
	k = s->stats_id;
	ss = bpf_map_lookup_elem(&session_stats, &k);
	if (!ss) {
		count(MS_NO_ENTRY);
		return grown;
	}
	hlen = s->hdr_len;
	fate = admit_copy(s, ci, hlen, &nfrag);
	if (fate == COPY_GO)
		fate = write_outer(skb, s, ci, hlen, &grown);
	if (fate == COPY_GO)
		fate = send_copy(skb, s, ci, slot, nfrag, last);
	count_copy(fate, skb, ss, s, ci, hlen, slot);
	return fate == COPY_REDIRECTED ? ENCAP_REDIRECTED : grown;
}

#endif /* ENCAP_BPF_H */
