/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * send.bpf.h: stage 2, how a finished copy leaves. Four ways: into the
 * `copies` ring buffer for the daemon (redirect_chain off, ring.bpf.h); as
 * outer fragments when it is over the MTU (fragment.bpf.h); a clone
 * redirected to the session's egress device; or, for the last copy of a
 * packet, the skb itself with bpf_redirect.
 */
#ifndef SEND_BPF_H
#define SEND_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "copy.bpf.h"
#include "fragment.bpf.h"
#include "ring.bpf.h"

/*
 * Send session `s`'s copy (session key `slot`), written whole, as
 * `nfrag` outer fragments if non-zero; `last`: no copy follows, so the skb
 * itself goes. COPY_SENT, COPY_REDIRECTED, or why it was not sent.
 */
static __always_inline enum copy_fate
send_copy(struct __sk_buff *skb, const struct mirror_session *s,
	  const struct copy_info *ci, __u32 slot, __u32 nfrag, __u32 last)
{
	int ret;

	if (ci->ring) {
		/* to the daemon: nothing is redirected a second time */
		ret = ring_copy(skb, s->ifindex);
		if (ret == RING_FULL)
			return COPY_RING_FULL;
		if (ret == RING_TOO_LONG)
			return COPY_TOO_LONG;
		return ret == RING_SENT ? COPY_SENT : COPY_ENCAP_FAIL;
	}
	if (nfrag) {
		/* as fragments, clones all (the skb, if last, is dropped) */
		if (hand_fragments(skb, slot, nfrag, next_frag_ident()))
			return COPY_ENCAP_FAIL;
		return COPY_SENT;
	}
	if (!last)
		return bpf_clone_redirect(skb, s->ifindex, 0) ? COPY_ENCAP_FAIL
							      : COPY_SENT;
	/* the last copy of all goes with the skb itself */
	bpf_redirect(s->ifindex, 0);
	return COPY_REDIRECTED;
}

#endif /* SEND_BPF_H */
