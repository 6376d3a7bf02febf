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

/* ring_copy()'s answers */
enum ring_result {
	RING_SENT = 0,
	RING_TOO_LONG = -1,   /* longer than COPY_BYTES_MAX */
	RING_FULL = -2,	      /* `copies` is full */
	RING_UNREADABLE = -3, /* the skb cannot be read (or no scratch) */
};

/*
 * Put the finished copy (the whole skb) in `copies` for the daemon to send
 * on `ifindex` (redirect_chain off). Returns an enum ring_result (an int:
 * a global function, verified once, returns a plain scalar).
 */
__noinline int ring_copy(struct __sk_buff *skb, __u32 ifindex)
{
	struct mirror_copy *c;
	__u32 k = 0;
	__u64 len;

	c = bpf_map_lookup_elem(&ring_scratch, &k);
	if (!skb || !c)
		return RING_UNREADABLE;
	len = skb->len;
	if (len > COPY_BYTES_MAX)
		return RING_TOO_LONG;
	if (len < ETH_HLEN)
		return RING_UNREADABLE;
	/* the bounds just checked stay on the register the helpers get */
	barrier_var(len);
	if (bpf_skb_load_bytes(skb, 0, c->bytes, len))
		return RING_UNREADABLE;
	c->ifindex = ifindex;
	c->len = len;
	if (bpf_ringbuf_output(&copies, c, COPY_HDR_LEN + len, 0))
		return RING_FULL;
	return RING_SENT;
}

#endif /* RING_BPF_H */
