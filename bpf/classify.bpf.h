/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * classify.bpf.h: the first rule of the live slot that matches a packet.
 *
 * Each dimension (source and destination address, source and destination
 * port, direction/family/protocol, VLAN, TCP flags, source interface) maps
 * the packet's value to a class whose bitmap holds the rules that value
 * allows. The first match is the lowest bit set in all eight bitmaps: a few
 * lookups whatever the number of rules, plus one AND per candidate word,
 * found through the summary words. The direction/protocol and destination
 * port classes come with a coarse mask (struct class_ref): most packets
 * that match nothing stop at those two lookups.
 */
#ifndef CLASSIFY_BPF_H
#define CLASSIFY_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "parse.bpf.h"

/* index of the lowest set bit, by de Bruijn multiplication (x != 0) */
static const __u8 debruijn64[64] = {
	0,  1,  48, 2,  57, 49, 28, 3,  61, 58, 50, 42, 38, 29, 17, 4,
	62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
	63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
	46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9,  13, 8,  7,  6,
};

static __always_inline __u32 lowest_bit(__u64 x)
{
	return debruijn64[((x & -x) * 0x03f79d71b4cb0a89ULL) >> 58];
}

static __always_inline struct rule_bits *
class_of(const struct mirror_config *cfg, __u32 slot, const __u32 *id)
{
	__u32 key;

	if (!id || *id >= cfg->class_capacity)
		return NULL;
	key = slot * cfg->class_capacity + *id;
	return bpf_map_lookup_elem(&class_bits, &key);
}

static __always_inline struct rule_bits *
addr_class(const struct mirror_config *cfg, __u32 slot, __u8 dim,
	   const struct pkt_info *p, const __be32 *addr)
{
	struct addr_key k = {
		.prefixlen = 32 + (p->family == 4 ? 32 : 128),
		.slot = slot,
		.dim = dim,
		.family = p->family,
	};

	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	return class_of(cfg, slot, bpf_map_lookup_elem(&addr_classes, &k));
}

static __always_inline struct class_ref *
port_ref(__u32 slot, __u32 which, const struct pkt_info *p, __u16 port)
{
	__u32 k = (slot * 2 + which) * PORT_KEYS +
		  (p->has_ports ? port : NO_PORTS);

	return bpf_map_lookup_elem(&port_classes, &k);
}

static __always_inline struct rule_bits *
ref_class(const struct mirror_config *cfg, __u32 slot,
	  const struct class_ref *ref)
{
	return class_of(cfg, slot, ref ? &ref->id : NULL);
}

static __always_inline struct rule_bits *
array_class(const struct mirror_config *cfg, __u32 slot, void *map, __u32 k)
{
	return class_of(cfg, slot, bpf_map_lookup_elem(map, &k));
}

static __always_inline struct rule_bits *
iface_class(const struct mirror_config *cfg, __u32 slot, __u32 ifindex)
{
	struct iface_key k = { .slot = slot, .ifindex = ifindex };
	__u32 *id = bpf_map_lookup_elem(&iface_classes, &k);

	/* an interface no rule names: the rules that name none */
	if (!id) {
		k.ifindex = 0;
		id = bpf_map_lookup_elem(&iface_classes, &k);
	}
	return class_of(cfg, slot, id);
}

/* AND a dimension's summary into acc; false when no candidate word is left */
static __always_inline int narrow(__u64 *acc, const struct rule_bits *b)
{
	__u64 any = 0;

	if (!b)
		return 0;
#pragma unroll
	for (int s = 0; s < SUMMARY_WORDS; s++) {
		acc[s] &= b->summary[s];
		any |= acc[s];
	}
	return any != 0;
}

/*
 * First rule of `slot` that matches; its `rules` key goes to *key.
 * Dimensions go cheapest first (arrays before the trie), and the summaries
 * are intersected as they come, so most non-matching packets stop early.
 * `filtered`: the filter rules' verdicts (filter_bits), after the filters
 * ran; NULL (a constant: no code) on the first pass.
 */
static __always_inline struct mirror_rule *
classify(const struct mirror_config *cfg, const struct pkt_info *p, __u8 dir,
	 __u32 slot, const struct rule_bits *filtered, __u32 *key)
{
	struct rule_bits *meta, *sport, *dport, *src, *dst, *vlan, *flags, *iface;
	struct class_ref *mref, *dref;
	__u32 k;
	__u64 acc[SUMMARY_WORDS];
	__u32 nsum;

	/* the bound again: Linux 6.1 forgets it across the stack (the resume
	 * path passes slot's address to a lookup) and rule_count[slot] needs it */
	slot &= 1;
	k = slot * META_KEYS + (dir == MIRROR_DIR_EGRESS ? 512 : 0) +
	    (p->family == 6 ? 256 : 0) + p->proto;
	mref = bpf_map_lookup_elem(&meta_classes, &k);
	dref = port_ref(slot, 1, p, p->dport);
	/* no rule position in common: turned away before any class bitmap */
	if (!mref || !dref || !(mref->coarse & dref->coarse))
		return NULL;

	/* each summary word covers 64 words, i.e. 4096 rules */
	nsum = (cfg->rule_count[slot] + 4095) / 4096;
#pragma unroll
	for (int s = 0; s < SUMMARY_WORDS; s++)
		acc[s] = s < nsum ? ~0ULL : 0;
	meta = ref_class(cfg, slot, mref);
	if (!narrow(acc, meta))
		return NULL;
	dport = ref_class(cfg, slot, dref);
	if (!narrow(acc, dport))
		return NULL;
	sport = ref_class(cfg, slot, port_ref(slot, 0, p, p->sport));
	if (!narrow(acc, sport))
		return NULL;
	flags = array_class(cfg, slot, &flag_classes,
			    slot * FLAG_KEYS + (p->flags & 0x1ff));
	if (!narrow(acc, flags))
		return NULL;
	vlan = array_class(cfg, slot, &vlan_classes,
			   slot * VLAN_KEYS + (p->vlan & 0x1fff));
	if (!narrow(acc, vlan))
		return NULL;
	iface = iface_class(cfg, slot, p->ifindex);
	if (!narrow(acc, iface))
		return NULL;
	dst = addr_class(cfg, slot, MIRROR_DIM_DST, p, p->dst);
	if (!narrow(acc, dst))
		return NULL;
	src = addr_class(cfg, slot, MIRROR_DIM_SRC, p, p->src);
	if (filtered && !narrow(acc, filtered))
		return NULL;
	if (!narrow(acc, src) || !meta || !dport || !sport || !dst || !vlan ||
	    !flags || !iface)
		return NULL;

	for (__u32 s = 0; s < SUMMARY_WORDS; s++) {
		__u64 cand = acc[s];

		for (__u32 j = 0; j < 64; j++) {
			__u32 w;
			__u64 x;

			if (!cand)
				break;
			/* s < SUMMARY_WORDS: the mask only shows the verifier */
			w = (s * 64 + lowest_bit(cand)) & (RULE_WORDS - 1);
			cand &= cand - 1;
			x = meta->words[w] & src->words[w] & dst->words[w] &
			    sport->words[w] & dport->words[w] & vlan->words[w] &
			    flags->words[w] & iface->words[w];
			if (filtered)
				x &= filtered->words[w];
			if (x) {
				*key = slot * MAX_RULES + w * 64 + lowest_bit(x);
				return bpf_map_lookup_elem(&rules, key);
			}
		}
	}
	return NULL;
}

#endif /* CLASSIFY_BPF_H */
