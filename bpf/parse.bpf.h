/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * parse.bpf.h: header parsing for the source programs.
 *
 * Contract: the common case (an untagged IPv4 header without options, or
 * IPv6 straight to TCP/UDP/SCTP, in the linear part) is read directly
 * (parse_direct); everything else through bpf_skb_load_bytes, so a
 * truncated or non-linear frame fails cleanly or is read where it is; the
 * original skb is never pulled or written;
 * each step returns PARSE_OK, PARSE_NOT_IP or PARSE_MALFORMED; ports come
 * out in host order, addresses in network order.
 */
#ifndef PARSE_BPF_H
#define PARSE_BPF_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"

#define IP_OFFSET_MASK 0x1fff
#define IP6_OFFSET_MASK 0xfff8

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,
	PARSE_MALFORMED,
};

/* what classification needs to know about one packet */
struct pkt_info {
	__be32 src[4];		/* network order; IPv4 in word 0 */
	__be32 dst[4];
	__u32 ifindex;		/* the source interface */
	__u16 sport;		/* host order, valid if has_ports */
	__u16 dport;
	__u16 vlan;		/* outer tag's id, VLAN_KEYS - 1 if untagged */
	__u16 flags;		/* TCP flags byte, NOT_TCP for other packets */
	__u8 family;		/* 4 or 6 */
	__u8 proto;		/* L4 protocol (last next-header for IPv6) */
	__u8 has_ports;		/* TCP/UDP/SCTP and not a later fragment */
	__u8 slot;		/* the rule slot classified against (stage 1 sets it) */
};

struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

struct ip6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ip6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* ports of TCP, UDP and SCTP: the first four bytes of each header */
static __always_inline int parse_ports(struct __sk_buff *skb, __u32 off,
				       struct pkt_info *pkt)
{
	__be16 ports[2];

	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP &&
	    pkt->proto != IPPROTO_SCTP)
		return PARSE_OK;
	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
		return PARSE_MALFORMED;
	pkt->sport = bpf_ntohs(ports[0]);
	pkt->dport = bpf_ntohs(ports[1]);
	pkt->has_ports = 1;
	if (pkt->proto == IPPROTO_TCP) {
		__u8 flags;

		/* the flags byte: offset 13 of the TCP header */
		if (bpf_skb_load_bytes(skb, off + 13, &flags, 1))
			return PARSE_MALFORMED;
		pkt->flags = flags;
	}
	return PARSE_OK;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off,
				      struct pkt_info *pkt)
{
	struct iphdr iph;

	if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)))
		return PARSE_MALFORMED;
	if (iph.version != 4 || iph.ihl < 5)
		return PARSE_MALFORMED;
	pkt->family = 4;
	pkt->proto = iph.protocol;
	pkt->src[0] = iph.saddr;
	pkt->dst[0] = iph.daddr;
	/* later fragments carry no L4 header */
	if (iph.frag_off & bpf_htons(IP_OFFSET_MASK))
		return PARSE_OK;
	return parse_ports(skb, off + iph.ihl * 4, pkt);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off,
				      struct pkt_info *pkt)
{
	struct ipv6hdr ip6;
	struct ip6_frag frag;
	struct ip6_ext ext;
	__u8 nexthdr;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
		return PARSE_MALFORMED;
	if (ip6.version != 6)
		return PARSE_MALFORMED;
	pkt->family = 6;
	__builtin_memcpy(pkt->src, &ip6.saddr, 16);
	__builtin_memcpy(pkt->dst, &ip6.daddr, 16);
	nexthdr = ip6.nexthdr;
	off += sizeof(ip6);

	/* bounded walk of the extension chain */
#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)))
				return PARSE_MALFORMED;
			nexthdr = ext.nexthdr;
			off += (ext.hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)))
				return PARSE_MALFORMED;
			nexthdr = ext.nexthdr;
			off += (ext.hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, &frag, sizeof(frag)))
				return PARSE_MALFORMED;
			nexthdr = frag.nexthdr;
			off += sizeof(frag);
			/* later fragments carry no L4 header */
			if (frag.frag_off & bpf_htons(IP6_OFFSET_MASK)) {
				pkt->proto = nexthdr;
				return PARSE_OK;
			}
			break;
		default:
			goto l4;
		}
	}
	/* chain longer than the walk: the L4 header stays unknown */
	pkt->proto = nexthdr;
	return PARSE_OK;
l4:
	pkt->proto = nexthdr;
	return parse_ports(skb, off, pkt);
}

/*
 * The common case without a helper call: an untagged IPv4 header without
 * options, or an IPv6 header followed directly by TCP, UDP or SCTP, all in
 * the skb's linear part. Direct reads only (a direct write would make the
 * verifier un-clone every cloned skb). Returns PARSE_OK, or -1 for
 * anything else: parse_frame's helper-read path then parses it from the
 * start.
 */
static __always_inline int parse_direct(struct __sk_buff *skb,
					struct pkt_info *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *l4;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > end || iph->version != 4 || iph->ihl != 5)
			return -1;
		pkt->family = 4;
		pkt->proto = iph->protocol;
		pkt->src[0] = iph->saddr;
		pkt->dst[0] = iph->daddr;
		if (iph->frag_off & bpf_htons(IP_OFFSET_MASK))
			return PARSE_OK;
		l4 = (void *)(iph + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return -1;
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP &&
		    ip6->nexthdr != IPPROTO_SCTP)
			return -1;
		pkt->family = 6;
		pkt->proto = ip6->nexthdr;
		__builtin_memcpy(pkt->src, &ip6->saddr, 16);
		__builtin_memcpy(pkt->dst, &ip6->daddr, 16);
		l4 = (void *)(ip6 + 1);
	} else {
		return -1;
	}
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP &&
	    pkt->proto != IPPROTO_SCTP)
		return PARSE_OK;
	/* the ports; for TCP the flags byte too (offset 13) */
	if ((void *)(l4 + (pkt->proto == IPPROTO_TCP ? 14 : 4)) > end)
		return -1;
	pkt->sport = (l4[0] << 8) | l4[1];
	pkt->dport = (l4[2] << 8) | l4[3];
	if (pkt->proto == IPPROTO_TCP)
		pkt->flags = l4[13];
	pkt->has_ports = 1;
	return PARSE_OK;
}

/* Ethernet, in-frame 802.1Q/802.1ad tags (QinQ), then IPv4 or IPv6 */
static __always_inline int parse_frame(struct __sk_buff *skb,
				       struct pkt_info *pkt)
{
	struct ethhdr eth;
	struct vlan_tag tag;
	__u32 off = sizeof(eth);
	__be16 proto;

	pkt->flags = NOT_TCP;
	/* the outer tag: accelerated (beside the frame) or the first in it */
	pkt->vlan = skb->vlan_present ? skb->vlan_tci & 0xfff : VLAN_KEYS - 1;
	if (parse_direct(skb, pkt) == PARSE_OK)
		return PARSE_OK;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return PARSE_MALFORMED;
	proto = eth.h_proto;
#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) &&
		    proto != bpf_htons(ETH_P_8021AD))
			break;
		if (bpf_skb_load_bytes(skb, off, &tag, sizeof(tag)))
			return PARSE_MALFORMED;
		if (pkt->vlan == VLAN_KEYS - 1)
			pkt->vlan = bpf_ntohs(tag.tci) & 0xfff;
		proto = tag.encap_proto;
		off += sizeof(tag);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(skb, off, pkt);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(skb, off, pkt);
	return PARSE_NOT_IP;
}

#endif /* PARSE_BPF_H */
