/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * encap.bpf.h: outer headers of a copy. Each builder fills a stack buffer
 * that the encap program writes in front of the inner frame in one store.
 * src/bpftap/collector/vxlan.py encodes the same bytes (a test compares).
 */
#ifndef ENCAP_BPF_H
#define ENCAP_BPF_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#include "mirror_abi.h"

#define VXLAN_FLAG_VNI 0x08000000U
/* RFC 7348: source ports from the dynamic range, chosen by flow hash */
#define UDP_SPORT_BASE 49152
#define UDP_SPORT_MASK 0x3fff
#define OUTER_TTL 64

struct vxlan_hdr {
	__be32 flags;
	__be32 vni;
};

/*
 * A 2-byte lead pad keeps the IP header 4-byte aligned; the bytes written
 * to the packet start at `eth`.
 */
struct vxlan4_outer {
	__u16 _lead;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan_hdr vx;
};

struct vxlan6_outer {
	__u16 _lead;
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct udphdr udp;
	struct vxlan_hdr vx;
};

#define VXLAN4_LEN (sizeof(struct vxlan4_outer) - 2) /* 50 */
#define VXLAN6_LEN (sizeof(struct vxlan6_outer) - 2) /* 70 */

static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void fill_eth(struct ethhdr *eth,
				     const struct mirror_session *s,
				     __u16 proto)
{
	__builtin_memcpy(eth->h_dest, s->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, s->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
}

static __always_inline void fill_udp_vxlan(struct udphdr *udp,
					   struct vxlan_hdr *vx,
					   const struct mirror_session *s,
					   __u32 inner_len, __u32 hash)
{
	udp->source = bpf_htons(UDP_SPORT_BASE + (hash & UDP_SPORT_MASK));
	udp->dest = bpf_htons(s->dst_port);
	udp->len = bpf_htons(sizeof(*udp) + sizeof(*vx) + inner_len);
	/* IPv4: zero is allowed (RFC 7348); IPv6: RFC 6935 zero checksum */
	udp->check = 0;
	vx->flags = bpf_htonl(VXLAN_FLAG_VNI);
	vx->vni = bpf_htonl(s->vni << 8);
}

/* outer Ethernet + IPv4 + UDP + VXLAN for an inner frame of inner_len */
static __always_inline void build_vxlan4(struct vxlan4_outer *h,
					 const struct mirror_session *s,
					 __u32 inner_len, __u32 hash)
{
	__builtin_memset(h, 0, sizeof(*h));
	fill_eth(&h->eth, s, ETH_P_IP);
	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.tot_len = bpf_htons(sizeof(h->ip) + sizeof(h->udp) +
				  sizeof(h->vx) + inner_len);
	/* DF set and ID 0: an atomic datagram (RFC 6864) */
	h->ip.frag_off = bpf_htons(0x4000);
	h->ip.ttl = OUTER_TTL;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.saddr = s->outer_src[0];
	h->ip.daddr = s->outer_dst[0];
	h->ip.check = ipv4_csum(&h->ip);
	fill_udp_vxlan(&h->udp, &h->vx, s, inner_len, hash);
}

/* outer Ethernet + IPv6 + UDP + VXLAN for an inner frame of inner_len */
static __always_inline void build_vxlan6(struct vxlan6_outer *h,
					 const struct mirror_session *s,
					 __u32 inner_len, __u32 hash)
{
	__builtin_memset(h, 0, sizeof(*h));
	fill_eth(&h->eth, s, ETH_P_IPV6);
	h->ip6.version = 6;
	/* flow label from the inner flow, as ECMP hashing expects */
	h->ip6.flow_lbl[0] = (hash >> 16) & 0x0f;
	h->ip6.flow_lbl[1] = (hash >> 8) & 0xff;
	h->ip6.flow_lbl[2] = hash & 0xff;
	h->ip6.payload_len =
		bpf_htons(sizeof(h->udp) + sizeof(h->vx) + inner_len);
	h->ip6.nexthdr = IPPROTO_UDP;
	h->ip6.hop_limit = OUTER_TTL;
	__builtin_memcpy(&h->ip6.saddr, s->outer_src, 16);
	__builtin_memcpy(&h->ip6.daddr, s->outer_dst, 16);
	fill_udp_vxlan(&h->udp, &h->vx, s, inner_len, hash);
}

#endif /* ENCAP_BPF_H */
