/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * ring.bpf.h: with `redirect_chain: false` stage 2 redirects nothing: each
 * finished copy goes into the `copies` ring buffer and the agent sends it
 * (src/bpftap/agent/copies.py), so no packet is redirected twice.
 */
#ifndef RING_BPF_H
#define RING_BPF_H

#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "mirror_abi.h"
#include "maps.bpf.h"

/*
 * Put the finished copy (the whole skb) in `copies` for the daemon to send
 * on `ifindex` (redirect_chain off). Returns 0, -1 if longer than
 * COPY_BYTES_MAX, -2 if the ring buffer is full, -3 if it cannot be read.
 * A global function, verified once.
 */
__noinline int ring_copy(struct __sk_buff *skb, __u32 ifindex)
{
	struct mirror_copy *c;
	__u32 k = 0;
	__u64 len;

	c = bpf_map_lookup_elem(&ring_scratch, &k);
	if (!skb || !c)
		return -3;
	len = skb->len;
	if (len > COPY_BYTES_MAX)
		return -1;
	if (len < ETH_HLEN)
		return -3;
	/* the bounds just checked stay on the register the helpers get */
	barrier_var(len);
	if (bpf_skb_load_bytes(skb, 0, c->bytes, len))
		return -3;
	c->ifindex = ifindex;
	c->len = len;
	if (bpf_ringbuf_output(&copies, c, COPY_HDR_LEN + len, 0))
		return -2;
	return 0;
}

#endif /* RING_BPF_H */
