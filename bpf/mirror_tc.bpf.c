/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mirror_tc.bpf.c: bpftap's TC programs.
 *
 * Stage 1, mirror_ingress / mirror_egress on the source interfaces:
 * parse -> classify against the live rule slot -> on a mirror match, clone
 * the untouched original to the internal device (bpftap0) with the rule
 * index in the clone's mark. The original always gets MIRROR_PASS.
 *
 * A super-packet's or TCP frame's clone for a GSO session (gso.bpf.h) is
 * encapsulated whole by mirror_gso on bpftap0's egress, before bpftap0
 * would segment it, and leaves from there.
 *
 * Stage 2, mirror_encap on the internal device's peer (bpftap1) ingress
 * (and on bpftap0's, for the fragments of copies over the MTU:
 * fragment.bpf.h):
 * the clone arrives segmented and with finished checksums (bpftap0 has
 * TSO, GSO and TX checksumming off); per session (slots in ascending
 * header length) the copy is admitted (admit.bpf.h), the head grows to
 * that session's header and the outer headers are written (outer.bpf.h),
 * and the copy goes with bpf_clone_redirect, the last with bpf_redirect
 * (send.bpf.h); encap.bpf.h counts each copy's fate once. With
 * redirect_chain off (config->ring_copies) no copy is redirected a second
 * time: each goes into the `copies` ring buffer and the daemon sends it
 * (agent/copies.py).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
/* stage 1: the source programs */
#include "parse.bpf.h"
#include "classify.bpf.h"
/* stage 2: copies, their outer headers, and how they leave */
#include "copy.bpf.h"
#include "group.bpf.h"
#include "limits.bpf.h"
#include "encap.bpf.h"
#include "fragment.bpf.h"
#include "stage2.bpf.h"
#include "gso.bpf.h"

/*
 * Clone the packet to the encap device with `xfer` in the clone's mark (the
 * caller restores the original's). A global function, verified once: the
 * per-session loop calls it.
 */
__noinline int hand_over(struct __sk_buff *skb, __u32 encap_ifindex,
			 __u32 xfer, __u32 rule)
{
	int ret;

	if (!skb)
		return 0;
	skb->mark = xfer;
	ret = bpf_clone_redirect(skb, encap_ifindex, 0);
	if (ret) {
		count(MS_CLONE_FAIL);
		log_event(MIRROR_LOG_ERROR, MIRROR_EV_CLONE_FAIL, skb->ifindex,
			  rule, 0, -ret, 0);
	}
	return 0;
}

/*
 * What the first matching rule `r` (key `key`) does with the packet: count
 * it, and hand the untouched original to stage 2 once per clone it needs.
 */
static __always_inline int act(struct __sk_buff *skb,
			       const struct mirror_config *cfg,
			       const struct mirror_rule *r, __u32 key, __u8 dir,
			       const struct pkt_info *p)
{
	struct rule_stats *rs;
	__u32 mark, stats_id, ifindex, xfer, *sid;
	__u64 gso;

	stats_id = r->stats_id;
	rs = bpf_map_lookup_elem(&rule_stats, &stats_id);
	if (rs) {
		rs->packets += 1;
		rs->bytes += skb->len;
	}
	if (r->action != MIRROR_ACT_MIRROR || !r->sessions) {
		count(MS_SKIPPED);
		return MIRROR_PASS;
	}
	count(MS_MATCHED);
	dbg("bpftap: rule %u matched, ifindex %u dir %u", r->number, skb->ifindex,
	    dir);

	/* hand the untouched original to stage 2; the mark is restored */
	ifindex = skb->ifindex;
	sid = bpf_map_lookup_elem(&source_ids, &ifindex);
	xfer = XFER_TAG | (dir == MIRROR_DIR_EGRESS ? XFER_EGRESS : 0) |
	       (sid ? (*sid << XFER_SOURCE_SHIFT) & XFER_SOURCE_MASK : 0) |
	       (key & XFER_RULE_MASK);
	mark = skb->mark;
	/*
	 * a super-packet: its GSO sessions take it whole, one clone each; so
	 * does a TCP frame, whose copies then skip the internal pair (other
	 * traffic keeps it: README "Big packets")
	 */
	gso = skb->gso_size || (p->flags != NOT_TCP && p->has_ports) ? ~0ULL
								     : 0;
	/* one clone for the sessions that take the whole frame */
	if (r->sessions & ~r->snap_sessions & ~(r->gso_sessions & gso))
		hand_over(skb, cfg->encap_ifindex, xfer, r->number);
	/*
	 * and one for each session that truncates or takes a super-packet
	 * whole; the bits are read from the map each time, so the verifier
	 * does not follow each mask state
	 */
	if (r->snap_sessions | (r->gso_sessions & gso)) {
		for (__u32 i = 0; i < MAX_SESSIONS - 1; i++) {
			if (!(((r->snap_sessions | (r->gso_sessions & gso)) >> i) & 1))
				continue;
			hand_over(skb, cfg->encap_ifindex,
				  xfer | ((i + 1) << XFER_PASS_SHIFT), r->number);
		}
	}
	skb->mark = mark;
	return MIRROR_PASS;
}

static __always_inline int mirror(struct __sk_buff *skb, __u8 dir)
{
	struct mirror_config *cfg;
	struct mirror_rule *r;
	struct pkt_info *p;
	__u32 key = 0;
	int ret;

	count(MS_SEEN);
	/* loop guard: our own copies pass untouched */
	if (skb->mark == MIRROR_COPY_MARK) {
		count(MS_LOOP);
		return MIRROR_PASS;
	}
	cfg = bpf_map_lookup_elem(&config, &key);
	p = bpf_map_lookup_elem(&scratch, &key);
	if (!cfg || !p)
		return MIRROR_PASS;
	/* the kill switch: nothing is copied, nothing else changes */
	if (cfg->paused) {
		count(MS_PAUSED);
		return MIRROR_PASS;
	}
	/*
	 * parsed straight into the per-CPU slot: what the classifier reads
	 * back from a map is unknown to the verifier, so its loops are
	 * verified once, not once per parse path (maps.bpf.h, `scratch`)
	 */
	__builtin_memset(p, 0, sizeof(*p));
	ret = parse_frame(skb, p);
	if (ret != PARSE_OK) {
		count(ret == PARSE_NOT_IP ? MS_NOT_IP : MS_MALFORMED);
		return MIRROR_PASS;
	}
	p->ifindex = skb->ifindex;
	p->slot = cfg->active_slot & 1;
	r = classify(cfg, p, dir, p->slot & 1, NULL, &key);
	if (!r) {
		count(MS_NO_MATCH);
		return MIRROR_PASS;
	}
	/* the first candidate has a filter: the slot's filters decide (p stays) */
	if (r->flags & MIRROR_RF_FILTER) {
		count(MS_FILTER_RUN);
		bpf_tail_call(skb, &filter_progs, FILTER_PROG(p->slot & 1, dir));
		count(MS_FILTER_FAIL);
		return MIRROR_PASS;
	}
	return act(skb, cfg, r, key, dir, p);
}

/*
 * Stage 1 after the generated filter program ran: the packet as the first
 * pass parsed it (scratch, this CPU), classified against the same slot with
 * the filter rules' verdicts as one more dimension.
 */
static __always_inline int mirror_filtered(struct __sk_buff *skb, __u8 dir)
{
	struct mirror_config *cfg;
	struct rule_bits *verdicts;
	struct mirror_rule *r;
	struct pkt_info *p;
	__u32 key = 0, slot;

	cfg = bpf_map_lookup_elem(&config, &key);
	p = bpf_map_lookup_elem(&scratch, &key);
	if (!cfg || !p)
		return MIRROR_PASS;
	slot = p->slot & 1;
	verdicts = bpf_map_lookup_elem(&filter_bits, &slot);
	if (!verdicts)
		return MIRROR_PASS;
	r = classify(cfg, p, dir, slot, verdicts, &key);
	if (!r) {
		count(MS_NO_MATCH);
		return MIRROR_PASS;
	}
	return act(skb, cfg, r, key, dir, p);
}

SEC("tc")
int mirror_ingress(struct __sk_buff *skb)
{
	return mirror(skb, MIRROR_DIR_INGRESS);
}

SEC("tc")
int mirror_egress(struct __sk_buff *skb)
{
	return mirror(skb, MIRROR_DIR_EGRESS);
}

SEC("tc")
int mirror_ingress_filtered(struct __sk_buff *skb)
{
	return mirror_filtered(skb, MIRROR_DIR_INGRESS);
}

SEC("tc")
int mirror_egress_filtered(struct __sk_buff *skb)
{
	return mirror_filtered(skb, MIRROR_DIR_EGRESS);
}

SEC("tc")
int mirror_encap(struct __sk_buff *skb)
{
	return encap_stage(skb);
}

/* from a pod's namespace to stage 2 on the node (attach: inside) */
#include "inside.bpf.h"

/*
 * On bpftap0's egress: stage 1's clone of a super-packet or a TCP frame
 * for one GSO session, encapsulated whole and sent (gso.bpf.h); everything else goes
 * on into bpftap0, whose segments reach mirror_encap on bpftap1.
 */
SEC("tc")
int mirror_gso(struct __sk_buff *skb)
{
	struct mirror_session *s;
	struct mirror_rule *r;
	__u32 key, pass, slot;

	pass = (skb->mark & XFER_PASS_MASK) >> XFER_PASS_SHIFT;
	if ((skb->mark & XFER_TAG_MASK) != XFER_TAG || !pass)
		return GSO_SLOW;
	key = skb->mark & XFER_RULE_MASK;
	r = bpf_map_lookup_elem(&rules, &key);
	if (!r || !((r->gso_sessions >> ((pass - 1) & 63)) & 1))
		return GSO_SLOW;
	slot = (key / MAX_RULES) * MAX_SESSIONS + pass - 1;
	/* a collector group: its member for this flow, as stage 2 picks it */
	if (r->flags & MIRROR_RF_GROUP) {
		s = bpf_map_lookup_elem(&sessions, &slot);
		if (s && s->group_size > 1)
			slot += group_member(slot, flow_sym_hash(skb) | 1) %
				s->group_size;
	}
	return gso_copy(skb, slot);
}

/*
 * On the egress of each listed link (config `links:`): an original takes
 * its bytes, those of every wire frame it becomes, from the link's bucket
 * (limits.bpf.h), so copies get only the room originals leave. Copies
 * (their mark) took theirs in stage 2. Nothing is refused here.
 */
SEC("tc")
int mirror_link(struct __sk_buff *skb)
{
	__u64 bytes = skb->len;

	if (skb->mark == MIRROR_COPY_MARK)
		return MIRROR_PASS;
	if (skb->gso_segs > 1)
		bytes += (__u64)(skb->gso_segs - 1) * gso_hdr_len(skb);
	link_original(skb->ifindex, bytes);
	return MIRROR_PASS;
}

/*
 * On both ends of the internal pair: passing every frame is the whole
 * job. An XDP program puts a veth in NAPI mode, so clones wait in the
 * device's own ring instead of the CPU's backlog queue that originals on
 * veth paths (pods, the lab) use too: under overload the ring overflows and
 * copies are dropped, never the originals.
 */
SEC("xdp.frags")
int mirror_napi(struct xdp_md *ctx)
{
	return XDP_PASS;
}

#ifdef MIRROR_DEBUG
#include "license_debug.h"
#else
char LICENSE[] SEC("license") = "BSD-2-Clause";
#endif
