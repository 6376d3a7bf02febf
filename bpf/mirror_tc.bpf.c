/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mirror_tc.bpf.c: bpftap's TC programs.
 *
 * Stage 1, mirror_ingress / mirror_egress on the source interfaces:
 * parse -> classify against the live rule slot -> on a mirror match, clone
 * the untouched original to the internal device (bpftap0) with the rule
 * index in the clone's mark. The original always gets MIRROR_PASS.
 *
 * Stage 2, mirror_encap on the internal device's peer (bpftap1) ingress:
 * the clone arrives segmented and with finished checksums (bpftap0 has
 * TSO, GSO and TX checksumming off); it is grown once per header size,
 * wrapped per session, and sent with bpf_clone_redirect, the last copy
 * with bpf_redirect.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "parse.bpf.h"
#include "classify.bpf.h"
#include "encap.bpf.h"

static __always_inline int mirror(struct __sk_buff *skb, __u8 dir)
{
	struct pkt_info pkt = {}, *p;
	struct mirror_config *cfg;
	struct mirror_rule *r;
	struct rule_stats *rs;
	__u32 key = 0, mark;
	int ret;

	count(MS_SEEN);
	/* loop guard: our own copies pass untouched */
	if (skb->mark == MIRROR_COPY_MARK) {
		count(MS_LOOP);
		return MIRROR_PASS;
	}
	dbg("mirror: dir %u len %u vlan %u", dir, skb->len, skb->vlan_present);
	ret = parse_frame(skb, &pkt);
	if (ret != PARSE_OK) {
		count(ret == PARSE_NOT_IP ? MS_NOT_IP : MS_MALFORMED);
		return MIRROR_PASS;
	}
	cfg = bpf_map_lookup_elem(&config, &key);
	p = bpf_map_lookup_elem(&scratch, &key);
	if (!cfg || !p)
		return MIRROR_PASS;
	*p = pkt;
	r = classify(cfg, p, dir, &key);
	if (!r) {
		count(MS_NO_MATCH);
		return MIRROR_PASS;
	}
	rs = bpf_map_lookup_elem(&rule_stats, &key);
	if (rs) {
		rs->packets += 1;
		rs->bytes += skb->len;
	}
	if (r->action != MIRROR_ACT_MIRROR || !r->sessions) {
		count(MS_SKIPPED);
		return MIRROR_PASS;
	}
	count(MS_MATCHED);

	/* hand the untouched original to stage 2; the mark is restored */
	mark = skb->mark;
	skb->mark = XFER_TAG | (dir == MIRROR_DIR_EGRESS ? XFER_EGRESS : 0) |
		    (key & XFER_RULE_MASK);
	ret = bpf_clone_redirect(skb, cfg->encap_ifindex, 0);
	skb->mark = mark;
	if (ret)
		count(MS_CLONE_FAIL);
	return MIRROR_PASS;
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
int mirror_encap(struct __sk_buff *skb)
{
	struct inner_l2 l2 = {};
	struct mirror_config *cfg;
	struct mirror_rule *r;
	__u32 key = 0, hash, inner_len;
	__u64 v4, v6;
	int ntags, ret;

	/* only clones handed over by stage 1 */
	if ((skb->mark & XFER_TAG_MASK) != XFER_TAG) {
		count(MS_XFER_BAD);
		return TC_ACT_SHOT;
	}
	cfg = bpf_map_lookup_elem(&config, &key);
	key = skb->mark & XFER_RULE_MASK;
	r = bpf_map_lookup_elem(&rules, &key);
	if (!cfg || !r)
		return TC_ACT_SHOT;
	v6 = r->sessions & cfg->v6_sessions;
	v4 = r->sessions & ~cfg->v6_sessions;
	hash = bpf_get_hash_recalc(skb);
	dbg("encap: len %u vlan %u proto %x", skb->len, skb->vlan_present, skb->protocol);
	ntags = take_vlan_tags(skb, &l2);
	if (ntags < 0) {
		count(MS_VLAN_DEPTH);
		return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, 0, l2.macs, sizeof(l2.macs)))
		return TC_ACT_SHOT;
	inner_len = skb->len + ntags * sizeof(struct vlan_ins);
	skb->mark = MIRROR_COPY_MARK;

	/* IPv4 outer headers first, then grow by the difference for IPv6 */
	if (v4) {
		if (grow_head(skb, VXLAN4_LEN + ntags * sizeof(struct vlan_ins),
			      VXLAN4_LEN, &l2, ntags, 1))
			goto fail;
		ret = send_copies(skb, v4, 0, v6 != 0, inner_len, hash);
		if (!v6)
			return ret;
	}
	if (v6) {
		if (v4 ? grow_head(skb, VXLAN6_LEN - VXLAN4_LEN, 0, &l2, 0, 0)
		       : grow_head(skb,
				   VXLAN6_LEN + ntags * sizeof(struct vlan_ins),
				   VXLAN6_LEN, &l2, ntags, 1))
			goto fail;
		return send_copies(skb, v6, 1, 0, inner_len, hash);
	}
	return TC_ACT_SHOT;
fail:
	count(MS_ENCAP_FAIL);
	return TC_ACT_SHOT;
}

#ifdef MIRROR_DEBUG
char LICENSE[] SEC("license") = "GPL";
#else
char LICENSE[] SEC("license") = "BSD-2-Clause";
#endif
