/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * csum.bpf.h: stage 2's checksums: the ones' complement sum of the inner
 * frame (once per packet) and the outer UDP checksum of IPv6 copies, which
 * IPv6 does not let a tunnel leave at zero.
 */
#ifndef CSUM_BPF_H
#define CSUM_BPF_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"
#include "tunnels.bpf.h"

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/*
 * Ones' complement sum of `len` bytes of the packet from `off`, folded to
 * 16 bits, or -1 if they cannot be read. csum_diff works on 4-byte words:
 * a tail is padded with zeroes, which add nothing.
 */
__noinline int frame_sum(struct __sk_buff *skb, __u32 off, __u32 len)
{
	struct csum_chunk *c;
	__u32 k = 0, n, words;
	__u64 sum = 0;

	c = bpf_map_lookup_elem(&csum_scratch, &k);
	if (!c)
		return -1;
	for (int i = 0; i < CSUM_CHUNKS && len; i++) {
		if (len >= CSUM_CHUNK) {
			if (bpf_skb_load_bytes(skb, off, c->bytes, CSUM_CHUNK))
				return -1;
			sum = bpf_csum_diff(NULL, 0, (__be32 *)c->bytes,
					    CSUM_CHUNK, (__u32)sum);
			off += CSUM_CHUNK;
			len -= CSUM_CHUNK;
			continue;
		}
		/* the tail: 1..CSUM_CHUNK-1 bytes, in words padded with zero */
		n = ((len - 1) & (CSUM_CHUNK - 1)) + 1;
		words = (n + 3) / 4;
		barrier_var(words);
		if (words > CSUM_CHUNK / 4)
			return -1;
		*(__u32 *)(c->bytes + (n & (CSUM_CHUNK - 4))) = 0;
		if (bpf_skb_load_bytes(skb, off, c->bytes, n))
			return -1;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)c->bytes, words * 4,
				    (__u32)sum);
		len = 0;
	}
	return len ? -1 : csum_fold(sum);
}

/* IPv6 pseudo-header for the UDP checksum (RFC 8200 section 8.1) */
struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__be32 nexthdr;
};

/*
 * Fill the outer UDP checksum of an IPv6 copy in `b` (`hlen` bytes, head
 * grown to hlen): pseudo-header, UDP and tunnel header, inner frame (its
 * sum computed once per packet). A zero result goes out as 0xffff.
 */
static __always_inline int udp6_csum(struct __sk_buff *skb, struct outer_buf *b,
				     struct copy_info *ci, __u32 hlen)
{
	struct pseudo6 ph = {};
	__u32 tlen = hlen - TUN_OFF6;
	__u64 sum;
	__u16 check;
	int inner;

	if (tlen < UDP_HLEN || tlen > MIRROR_HDR_MAX - TUN_OFF6)
		return -1;
	if (!(ci->done & COPY_CSUM)) {
		inner = frame_sum(skb, hlen, ci->inner_len);
		if (inner < 0)
			return -1;
		ci->csum = inner;
		ci->done |= COPY_CSUM;
	}
	__builtin_memcpy(&ph, b->bytes + L3_OFF + 8, 32);
	ph.len = bpf_htonl(tlen + ci->inner_len);
	ph.nexthdr = bpf_htonl(IPPROTO_UDP);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)(b->bytes + TUN_OFF6),
			    tlen & ~3U, (__u32)sum);
	check = ~csum_fold(sum + ci->csum);
	*(__u16 *)(b->bytes + TUN_OFF6 + 6) = check ? check : 0xffff;
	return 0;
}

#endif /* CSUM_BPF_H */
