/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * tunnels.bpf.h: the outer headers of a copy, one builder per tunnel type,
 * written into a stack buffer that the encap stage stores in front of the
 * inner frame in one call. Pure: no maps, no skb. src/bpftap/tunnels/
 * encodes the same bytes; tests/bpf/test_tunnels_bytes.py compares them
 * for every type, family and option.
 *
 * Every tunnel header is a whole number of 32-bit words, so builders write
 * big-endian words at 4-byte aligned offsets of the buffer.
 */
#ifndef TUNNELS_BPF_H
#define TUNNELS_BPF_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>

#include "mirror_abi.h"

#ifndef IPPROTO_GRE
#define IPPROTO_GRE 47
#endif
#define OUTER_TTL 64
/* RFC 7348 / RFC 8926: source ports from the dynamic range, by flow hash */
#define UDP_SPORT_BASE 49152
#define UDP_SPORT_MASK 0x3fff
#define UDP_HLEN 8
/* GRE protocols from linux/if_ether.h: ETH_P_TEB, ETH_P_ERSPAN (type II), ETH_P_ERSPAN2 (type III) */
#define GRE_F_KEY 0x2000
#define GRE_F_SEQ 0x1000
#define VXLAN_F_VNI 0x08000000U
#define ERSPAN_EN_INFRAME 3 /* type II: the VLAN tag is kept in the frame */
#define VLAN_TPID_8021Q 0x8100
#define VLAN_TPID_8021AD 0x88a8

/* one accelerated tag as it goes back into the frame: TPID, then TCI */
struct vlan_ins {
	__be16 proto;
	__be16 tci;
};

/* the inner frame's addresses and the accelerated tags put back into it */
struct inner_l2 {
	__u8 macs[2 * ETH_ALEN];
	struct vlan_ins tags[MAX_VLAN_TAGS];
};

/*
 * What every copy of one packet shares, filled once by mirror_encap and
 * read by each session's encap_one() (per-CPU map `copy_scratch`: a
 * global function's arguments can only be scalars before kernel 5.12).
 */
struct copy_info {
	__u64 tstamp;		/* CLOCK_REALTIME ns of the packet */
	struct inner_l2 l2;
	__u32 inner_len;	/* the inner frame, tags included */
	__u32 hash;		/* inner flow hash: UDP source port, flow label */
	__u32 ifindex;		/* source interface, 0 = unknown */
	__u32 csum;		/* ones' complement sum of the inner frame */
	__u32 rule;		/* the matching rule's number, for the log */
	__u16 vlan_tci;		/* outermost tag, host order */
	__u8 tagged;		/* 1 if the inner frame has a tag */
	__u8 dir;		/* MIRROR_DIR_*, 0 = unknown */
	__u8 ntags;		/* accelerated tags to put back */
	__u8 done;		/* COPY_*: fields filled on first use */
	__u8 truncated;		/* 1 if the frame was cut to a snaplen */
	__u8 ring;		/* 1: copies go to `copies`, not redirected */
};

/* copy_info.done: what only some tunnels need, computed once per packet */
#define COPY_TIME 0x01 /* tstamp (ERSPAN III) */
#define COPY_VLAN 0x02 /* tagged, vlan_tci (ERSPAN) */
#define COPY_CSUM 0x04 /* csum (IPv6 UDP) */

/* the inner frame is checksummed in chunks of this size (the csum_diff limit) */
#define CSUM_CHUNK 512
#define CSUM_CHUNKS 128 /* 64 KiB */

struct csum_chunk {
	__u8 bytes[CSUM_CHUNK];
};

/*
 * The header buffer: a 2-byte lead keeps the outer IP header and the
 * tunnel words 4-byte aligned; the bytes on the wire start at `bytes`.
 */
struct outer_buf {
	__u16 _lead;
	__u8 bytes[MIRROR_HDR_MAX];
};

#define L3_OFF ETH_HLEN
#define TUN_OFF4 (ETH_HLEN + (int)sizeof(struct iphdr))
#define TUN_OFF6 (ETH_HLEN + (int)sizeof(struct ipv6hdr))

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

static __always_inline __u32 udp_sport(__u32 hash)
{
	return UDP_SPORT_BASE + (hash & UDP_SPORT_MASK);
}

/* GRE base word (RFC 2784/2890): flags, version 0, protocol; optional key and seq */
static __always_inline __u32 gre_words(__be32 *w, __u16 proto, __u32 key,
				       __u32 seq, __u8 flags)
{
	__u32 n = 1;

	w[0] = bpf_htonl(((__u32)((flags & MIRROR_SF_KEY ? GRE_F_KEY : 0) |
				  (flags & MIRROR_SF_SEQ ? GRE_F_SEQ : 0))
			  << 16) |
			 proto);
	if (flags & MIRROR_SF_KEY)
		w[n++] = bpf_htonl(key);
	if (flags & MIRROR_SF_SEQ)
		w[n++] = bpf_htonl(seq);
	return n * 4;
}

/* UDP header (checksum 0 here; IPv6 callers fill it) */
static __always_inline void udp_words(__be32 *w, __u32 hash, __u16 dport,
				      __u32 len)
{
	w[0] = bpf_htonl((udp_sport(hash) << 16) | dport);
	w[1] = bpf_htonl(len << 16);
}

/* ERSPAN word 0: version, VLAN, COS, En/BSO, T, session id */
static __always_inline __be32 erspan_word0(__u32 ver, __u32 en,
					   const struct copy_info *ci,
					   __u32 sid)
{
	__u32 vlan = ci->tagged ? ci->vlan_tci & 0x0fff : 0;
	__u32 cos = ci->tagged ? ci->vlan_tci >> 13 : 0;

	return bpf_htonl(ver << 28 | vlan << 16 | cos << 13 | en << 11 |
			 (sid & 0x3ff));
}

/*
 * The tunnel part after the outer IP header: UDP + VXLAN/GENEVE, or GRE
 * (+ ERSPAN). Returns its length; 0 for an unknown tunnel type.
 */
static __always_inline __u32 fill_tunnel(__be32 *w,
					 const struct mirror_session *s,
					 const struct copy_info *ci, __u32 seq)
{
	__u32 n;

	switch (s->tunnel) {
	case MIRROR_TUN_VXLAN:
		udp_words(w, ci->hash, s->dst_port, UDP_HLEN + 8 + ci->inner_len);
		w[2] = bpf_htonl(VXLAN_F_VNI);
		w[3] = bpf_htonl(s->tun_id << 8);
		return UDP_HLEN + 8;
	case MIRROR_TUN_GENEVE:
		udp_words(w, ci->hash, s->dst_port, UDP_HLEN + 24 + ci->inner_len);
		/* version 0, 4 words of options, O and C clear, TEB */
		w[2] = bpf_htonl(4 << 24 | ETH_P_TEB);
		w[3] = bpf_htonl(s->tun_id << 8);
		w[4] = bpf_htonl(GENEVE_OPT_CLASS_BPFTAP << 16 |
				 GENEVE_OPT_TYPE_SOURCE << 8 | 3);
		w[5] = bpf_htonl(GENEVE_OPT_VERSION << 24 | (__u32)ci->dir << 16);
		w[6] = bpf_htonl(ci->ifindex);
		w[7] = bpf_htonl(seq);
		return UDP_HLEN + 24;
	case MIRROR_TUN_GRE:
		return gre_words(w, ETH_P_TEB, s->tun_id, seq, s->flags);
	case MIRROR_TUN_ERSPAN2:
		n = gre_words(w, ETH_P_ERSPAN, 0, seq, MIRROR_SF_SEQ);
		w[2] = erspan_word0(1, ci->tagged ? ERSPAN_EN_INFRAME : 0, ci,
				    s->tun_id);
		/* reserved 12 bits, then the source port index */
		w[3] = bpf_htonl(ci->ifindex & 0xfffff);
		return n + 8;
	case MIRROR_TUN_ERSPAN3:
		n = gre_words(w, ETH_P_ERSPAN2, 0, seq, MIRROR_SF_SEQ);
		w[2] = erspan_word0(2, 0, ci, s->tun_id);
		w[3] = bpf_htonl((__u32)(ci->tstamp % 1000000000ULL));
		/* SGT 0, P (Ethernet PDU), FT 0, Hw ID 0, D, Gra, O */
		w[4] = bpf_htonl(1 << 15 |
				 (ci->dir == MIRROR_DIR_EGRESS ? 1 << 3 : 0) |
				 ERSPAN3_GRA_1588 << 1 |
				 (s->flags & MIRROR_SF_PLATFORM ? 1 : 0));
		if (!(s->flags & MIRROR_SF_PLATFORM))
			return n + 12;
		w[5] = bpf_htonl(ERSPAN3_PLATFORM_ID << 26 |
				 (ci->ifindex & 0x3fff));
		w[6] = bpf_htonl((__u32)(ci->tstamp / 1000000000ULL));
		return n + 20;
	}
	return 0;
}

static __always_inline void fill_eth(struct ethhdr *eth,
				     const struct mirror_session *s,
				     __u16 proto)
{
	__builtin_memcpy(eth->h_dest, s->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, s->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
}

static __always_inline __u8 l4_proto(const struct mirror_session *s)
{
	return s->tunnel == MIRROR_TUN_VXLAN || s->tunnel == MIRROR_TUN_GENEVE
		       ? IPPROTO_UDP
		       : IPPROTO_GRE;
}

/*
 * All outer headers of one copy into `b`. Returns their length (what
 * the session's hdr_len must be), 0 if the session is not buildable.
 * The UDP checksum stays 0: zero for IPv4 (RFC 768), filled by the encap
 * stage for IPv6.
 */
static __always_inline __u32 build_outer(struct outer_buf *b,
					 const struct mirror_session *s,
					 const struct copy_info *ci, __u32 seq)
{
	struct ethhdr *eth = (void *)b->bytes;
	__u32 tlen;

	__builtin_memset(b, 0, sizeof(*b));
	if (s->family == 6) {
		struct ipv6hdr *ip6 = (void *)(b->bytes + L3_OFF);

		tlen = fill_tunnel((void *)(b->bytes + TUN_OFF6), s, ci, seq);
		if (!tlen)
			return 0;
		fill_eth(eth, s, ETH_P_IPV6);
		ip6->version = 6;
		/* flow label from the inner flow, as ECMP hashing expects */
		ip6->flow_lbl[0] = (ci->hash >> 16) & 0x0f;
		ip6->flow_lbl[1] = (ci->hash >> 8) & 0xff;
		ip6->flow_lbl[2] = ci->hash & 0xff;
		ip6->payload_len = bpf_htons(tlen + ci->inner_len);
		ip6->nexthdr = l4_proto(s);
		ip6->hop_limit = OUTER_TTL;
		__builtin_memcpy(&ip6->saddr, s->outer_src, 16);
		__builtin_memcpy(&ip6->daddr, s->outer_dst, 16);
		return TUN_OFF6 + tlen;
	}
	if (s->family == 4) {
		struct iphdr *ip = (void *)(b->bytes + L3_OFF);

		tlen = fill_tunnel((void *)(b->bytes + TUN_OFF4), s, ci, seq);
		if (!tlen)
			return 0;
		fill_eth(eth, s, ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tot_len = bpf_htons(sizeof(*ip) + tlen + ci->inner_len);
		/* DF set and ID 0: an atomic datagram (RFC 6864) */
		ip->frag_off = bpf_htons(0x4000);
		ip->ttl = OUTER_TTL;
		ip->protocol = l4_proto(s);
		ip->saddr = s->outer_src[0];
		ip->daddr = s->outer_dst[0];
		ip->check = ipv4_csum(ip);
		return TUN_OFF4 + tlen;
	}
	return 0;
}

#endif /* TUNNELS_BPF_H */
