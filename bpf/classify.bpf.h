/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * classify.bpf.h: the first rule of the live slot that matches a packet.
 */
#ifndef CLASSIFY_BPF_H
#define CLASSIFY_BPF_H

#include "maps.bpf.h"

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

#endif /* CLASSIFY_BPF_H */
