/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * inside.bpf.h: the way from stage 1 inside a pod's network namespace
 * (a pod source with `attach: inside`) to stage 2 on the node.
 *
 * Per pod the agent makes a veth pair of its own: one end in the pod's
 * namespace, created there with the ifindex of bpftap0 (so stage 1's clone
 * to cfg->encap_ifindex lands on it, as it does on the node), the other
 * end in the node's namespace. The pod's eth0 gets mirror_ingress and
 * mirror_egress as any source does.
 *
 * Crossing namespaces, veth scrubs the clone (skb_scrub_packet with xnet:
 * mark and tstamp cleared; __dev_forward_skb2 zeroes priority too), and
 * the mark is what tells stage 2 the rule, pass and source. skb->hash is
 * left alone by the scrub, so:
 *   mirror_xfer_out, on the pod end's egress (pod namespace, mark intact):
 *     puts the mark in the hash; anything not from stage 1 is dropped, so
 *     nothing of the pod's own reaches the node this way;
 *   mirror_encap_inside, on the node end's ingress (node namespace):
 *     takes the mark back from the hash, with the source id of this node
 *     end (the pod's eth0 ifindex means nothing in the node's namespace),
 *     clears the hash (the copy's UDP source port comes from the flow's)
 *     and redirects the clone to bpftap0's egress: from there it takes
 *     the node's own way, a GSO session's super-packet encapsulated whole
 *     by mirror_gso, the rest segmented with finished checksums for stage
 *     2 on bpftap1; the copy leaves by the session's device, the node's
 *     uplink, never by the pod's interface. The pair keeps the kernel's
 *     offloads, so super-packets cross it whole.
 */
#ifndef BPFTAP_INSIDE_BPF_H
#define BPFTAP_INSIDE_BPF_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"

SEC("tc")
int mirror_xfer_out(struct __sk_buff *skb)
{
	if ((skb->mark & XFER_TAG_MASK) != XFER_TAG) {
		count(MS_XFER_BAD);
		return TC_ACT_SHOT;
	}
	bpf_set_hash(skb, skb->mark);
	return TC_ACT_OK;
}

SEC("tc")
int mirror_encap_inside(struct __sk_buff *skb)
{
	__u32 xfer = skb->hash, ifindex = skb->ifindex, key = 0, *sid;
	struct mirror_config *cfg;

	cfg = bpf_map_lookup_elem(&config, &key);
	if ((xfer & XFER_TAG_MASK) != XFER_TAG || !cfg) {
		count(MS_XFER_BAD);
		return TC_ACT_SHOT;
	}
	sid = bpf_map_lookup_elem(&source_ids, &ifindex);
	xfer &= ~XFER_SOURCE_MASK;
	if (sid)
		xfer |= (*sid << XFER_SOURCE_SHIFT) & XFER_SOURCE_MASK;
	skb->mark = xfer;
	bpf_set_hash_invalid(skb);
	return bpf_redirect(cfg->encap_ifindex, 0);
}

#endif /* BPFTAP_INSIDE_BPF_H */
