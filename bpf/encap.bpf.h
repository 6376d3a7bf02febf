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
#include "maps.bpf.h"

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

#endif /* ENCAP_BPF_H */
