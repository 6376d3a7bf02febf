/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * stage2.bpf.h: stage 2's entry, mirror_encap's (bpftap1's and bpftap0's
 * ingress; clones from pods attached inside come this way too, through
 * bpftap0: inside.bpf.h): the fragments of a copy over the MTU go to
 * send_fragment(); stage 1's clones are prepared once (copy.bpf.h), cut
 * for a truncating pass, and copied to each session of the pass in slot
 * order by encap_one() (encap.bpf.h).
 */
#ifndef STAGE2_BPF_H
#define STAGE2_BPF_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "copy.bpf.h"
#include "group.bpf.h"
#include "encap.bpf.h"
#include "fragment.bpf.h"

/* stage 2 for a clone whose mark says what stage 1 matched */
static __always_inline int encap_stage(struct __sk_buff *skb)
{
	struct mirror_config *cfg;
	struct copy_info *ci;
	struct mirror_rule *r;
	__u32 key = 0, grown = 0, base, hash = 0, pass;
	struct mirror_session *s;
	__u64 mask;
	int ret;

	/* a copy over the MTU, back for one of its fragments */
	if ((skb->mark & XFER_TAG_MASK) == FRAG_TAG)
		return send_fragment(skb);
	/* else only clones handed over by stage 1 */
	if ((skb->mark & XFER_TAG_MASK) != XFER_TAG) {
		count(MS_XFER_BAD);
		return TC_ACT_SHOT;
	}
	ci = bpf_map_lookup_elem(&copy_scratch, &key);
	cfg = bpf_map_lookup_elem(&config, &key);
	key = skb->mark & XFER_RULE_MASK;
	r = bpf_map_lookup_elem(&rules, &key);
	if (!ci || !r || !cfg) {
		count(MS_NO_ENTRY);
		return TC_ACT_SHOT;
	}
	/* the session table of the rule's own slot */
	base = (key / MAX_RULES) * MAX_SESSIONS;
	/*
	 * pass 0: the sessions that take the whole frame; n: session n - 1
	 * (truncating, or a GSO session whose super-packet mirror_gso left
	 * to this path: here one segment of it)
	 */
	pass = (skb->mark & XFER_PASS_MASK) >> XFER_PASS_SHIFT;
	mask = pass ? (r->snap_sessions | r->gso_sessions) &
			      (1ULL << ((pass - 1) & 63))
		    : r->sessions & ~r->snap_sessions;
	/* collector groups pick a member by flow: hash the frame as it came */
	if (r->flags & MIRROR_RF_GROUP)
		hash = flow_sym_hash(skb) | 1;
	ret = prepare_copy(skb, ci, !!cfg->ring_copies);
	if (ret != PREP_OK) {
		count(ret == PREP_VLAN_DEPTH ? MS_VLAN_DEPTH : MS_ENCAP_FAIL);
		log_event(MIRROR_LOG_WARN,
			  ret == PREP_VLAN_DEPTH ? MIRROR_EV_VLAN_DEPTH
						 : MIRROR_EV_ENCAP_FAIL,
			  ci->ifindex, r->number, 0, 0, 0);
		return TC_ACT_SHOT;
	}
	ci->rule = r->number;
	ci->truncated = 0;
	if (pass && truncate(skb, ci, base + pass - 1))
		goto fail;
	skb->mark = MIRROR_COPY_MARK;

	/*
	 * one copy per session in slot order, i.e. ascending header length;
	 * mask stays as it is (the last copy is the one with no session
	 * after it): Linux 6.1's verifier marks every scalar precise past the
	 * encap_one() call, and a mask that differed between the paths
	 * through the loop made their states distinct: 2^64 of them
	 */
	for (__u32 i = 0; i < MAX_SESSIONS; i++) {
		__u32 slot = base + i;

		if (!((mask >> i) & 1))
			continue;
		/* a collector group: its member for this flow, both ways alike
		 * (only rules that feed a group pay for the extra lookup) */
		if (hash) {
			s = bpf_map_lookup_elem(&sessions, &slot);
			if (s && s->group_size > 1)
				slot += group_member(slot, hash) % s->group_size;
		}
		ret = encap_one(skb, slot, grown, !(mask >> i >> 1));
		if (ret == ENCAP_REDIRECTED)
			return TC_ACT_REDIRECT;
		grown = ret;
	}
	return TC_ACT_SHOT;
fail:
	count(MS_ENCAP_FAIL);
	return TC_ACT_SHOT;
}

#endif /* STAGE2_BPF_H */
