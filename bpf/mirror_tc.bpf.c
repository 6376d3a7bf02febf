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
#include "parse.bpf.h"
#include "encap.bpf.h"

/* bpf_printk is GPL-only: the default (non-GPL) build compiles it out */
#ifdef MIRROR_DEBUG
#define dbg(fmt, ...) bpf_printk(fmt, ##__VA_ARGS__)
#else
#define dbg(fmt, ...) ((void)0)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mirror_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_RULES);
	__type(key, __u32);
	__type(value, struct mirror_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct mirror_session);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MS__MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_SLOTS * MAX_RULES);
	__type(key, __u32);
	__type(value, struct rule_stats);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct session_stats);
} session_stats SEC(".maps");

/*
 * Parsed headers pass through this per-CPU slot before classification:
 * values read back from a map are unknown to the verifier, so the rule loop
 * is verified once instead of once per parse path (which hit the 1M
 * instruction limit).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pkt_info);
} scratch SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *slot = bpf_map_lookup_elem(&stats, &reason);

	if (slot)
		*slot += 1;
}

static __always_inline int addr_in(const __be32 *addr, const __be32 *net,
				   const __be32 *mask)
{
	return ((addr[0] & mask[0]) == net[0]) &
	       ((addr[1] & mask[1]) == net[1]) &
	       ((addr[2] & mask[2]) == net[2]) &
	       ((addr[3] & mask[3]) == net[3]);
}

static __always_inline int port_in(__u16 port, __u8 has_ports, __u16 lo,
				   __u16 hi)
{
	if (lo == 0 && hi == 0xffff)
		return 1;
	return has_ports && port >= lo && port <= hi;
}

static __always_inline int rule_matches(const struct mirror_rule *r,
					const struct pkt_info *p, __u8 dir)
{
	if (!(r->dirs & dir))
		return 0;
	if (r->family && r->family != p->family)
		return 0;
	if (r->proto && r->proto != p->proto)
		return 0;
	if (!addr_in(p->src, r->src_net, r->src_mask) ||
	    !addr_in(p->dst, r->dst_net, r->dst_mask))
		return 0;
	return port_in(p->sport, p->has_ports, r->sport_lo, r->sport_hi) &&
	       port_in(p->dport, p->has_ports, r->dport_lo, r->dport_hi);
}

/* first rule of the live slot that matches; its map key goes to *key */
static __always_inline struct mirror_rule *
classify(const struct mirror_config *cfg, const struct pkt_info *pkt,
	 __u8 dir, __u32 *key)
{
	__u32 slot = cfg->active_slot & 1;
	__u32 n = cfg->rule_count[slot];

	for (__u32 i = 0; i < MAX_RULES; i++) {
		struct mirror_rule *r;

		if (i >= n)
			break;
		*key = slot * MAX_RULES + i;
		r = bpf_map_lookup_elem(&rules, key);
		if (!r)
			break;
		if (rule_matches(r, pkt, dir))
			return r;
	}
	return NULL;
}

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

/* one tag as it sits after the addresses: TPID, then TCI */
struct vlan_ins {
	__be16 proto;
	__be16 tci;
};

/* the inner frame's addresses and the VLAN tags put back into it */
struct inner_l2 {
	__u8 macs[2 * ETH_ALEN];
	struct vlan_ins tags[MAX_VLAN_TAGS];
};

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
 * Grow the head by `grow` bytes; on the first growth also put the inner
 * frame's addresses and tags back in front of its EtherType.
 */
static __always_inline int grow_head(struct __sk_buff *skb, __u32 grow,
				     __u32 hlen, const struct inner_l2 *l2,
				     int ntags, int first)
{
	if (bpf_skb_change_head(skb, grow, 0))
		return -1;
	if (!first)
		return 0;
	return bpf_skb_store_bytes(skb, hlen, l2,
				   2 * ETH_ALEN +
					   (ntags & 3) * sizeof(struct vlan_ins),
				   0);
}

/*
 * One copy per session in `mask`, all of one outer family, the head already
 * grown to that family's header. Returns the verdict: TC_ACT_REDIRECT when
 * the last copy of all went out with bpf_redirect, else TC_ACT_SHOT.
 */
static __always_inline int send_copies(struct __sk_buff *skb, __u64 mask,
				       int v6, int more_after, __u32 inner_len,
				       __u32 hash)
{
	const __u32 hlen = v6 ? VXLAN6_LEN : VXLAN4_LEN;
	struct session_stats *ss;
	struct mirror_session *s;
	int ret;

	for (__u32 i = 0; i < MAX_SESSIONS; i++) {
		/* a key of its own keeps i a register the verifier tracks */
		__u32 key = i;
		__u64 bit = 1ULL << i;

		if (!(mask & bit))
			continue;
		mask &= ~bit;
		s = bpf_map_lookup_elem(&sessions, &key);
		ss = bpf_map_lookup_elem(&session_stats, &key);
		if (!s || !ss)
			break;
		if (!s->ifindex) {
			ss->unresolved += 1;
			count(MS_UNRESOLVED);
			continue;
		}
		if (hlen - ETH_HLEN + inner_len > s->mtu) {
			ss->oversize += 1;
			count(MS_OVERSIZE);
			continue;
		}
		if (v6) {
			struct vxlan6_outer h;

			build_vxlan6(&h, s, inner_len, hash);
			ret = bpf_skb_store_bytes(skb, 0, &h.eth, VXLAN6_LEN, 0);
		} else {
			struct vxlan4_outer h;

			build_vxlan4(&h, s, inner_len, hash);
			ret = bpf_skb_store_bytes(skb, 0, &h.eth, VXLAN4_LEN, 0);
		}
		if (ret) {
			ss->encap_fail += 1;
			count(MS_ENCAP_FAIL);
			continue;
		}
		/* the last copy of all goes with the skb itself */
		if (!mask && !more_after) {
			ss->packets += 1;
			ss->bytes += skb->len;
			count(MS_COPY_SENT);
			return bpf_redirect(s->ifindex, 0);
		}
		if (bpf_clone_redirect(skb, s->ifindex, 0)) {
			ss->encap_fail += 1;
			count(MS_ENCAP_FAIL);
			continue;
		}
		ss->packets += 1;
		ss->bytes += skb->len;
		count(MS_COPY_SENT);
	}
	return TC_ACT_SHOT;
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
