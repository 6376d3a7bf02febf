/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * admit.bpf.h: stage 2, whether one session's copy of a packet may go, and
 * the one reason if not: no next hop, over the MTU without fragments, not
 * the 1 in the sample, over the session's rate, over the copy budget or its
 * link's room (the buckets are in limits.bpf.h). Nothing is counted here:
 * encap_one() counts the answer once.
 */
#ifndef ADMIT_BPF_H
#define ADMIT_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>

#include "mirror_abi.h"
#include "tunnels.bpf.h"
#include "copy.bpf.h"
#include "limits.bpf.h"
#include "fragment.bpf.h"

/*
 * COPY_GO, or why the copy of `hlen` outer header bytes for session `s`
 * may not go. A copy over the MTU goes as outer fragments if it takes few
 * enough (only by redirecting: with `copies` it is oversize); `*nfrag` says
 * how many (0: one whole copy).
 */
static __always_inline enum copy_fate admit_copy(const struct mirror_session *s,
						 const struct copy_info *ci,
						 __u32 hlen, __u32 *nfrag)
{
	if (!s->ifindex)
		return COPY_UNRESOLVED;
	if (hlen - ETH_HLEN + ci->inner_len > s->mtu && !ci->ring)
		*nfrag = frag_count(s, hlen - ETH_HLEN + ci->inner_len);
	if (hlen - ETH_HLEN + ci->inner_len > s->mtu && !*nfrag)
		return COPY_OVERSIZE;
	if (sampled_out(s))
		return COPY_SAMPLED_OUT;
	if (over_rate(s->stats_id, s->rate_pps, s->rate_bps,
		      hlen + ci->inner_len, 0))
		return COPY_RATE_LIMITED;
	if (shed_copy(s, hlen + ci->inner_len, *nfrag ? *nfrag : 1))
		return COPY_SHED;
	return COPY_GO;
}

#endif /* ADMIT_BPF_H */
