/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * cni_redirect.bpf.c: a stand-in for an eBPF CNI's host routing (Cilium's
 * or Calico's eBPF data path), written for bpftap's pod tests and sharing
 * nothing with bpftap's own sources.
 *
 * cni_redirect runs on tc ingress of the node's uplink and of each pod's
 * host-side veth. An IPv4 or IPv6 packet whose destination is in `routes`
 * gets the route's MAC addresses and leaves at once, past the host stack:
 *   - a route with `peer` set (a pod's address, on the uplink): with
 *     bpf_redirect_peer to the host-side veth's peer, i.e. straight into
 *     the pod's eth0 ingress; the host-side veth's own hooks never see it;
 *   - else (an outside address, on a pod's veth): with bpf_redirect to the
 *     route's device's egress (the uplink).
 * Everything else gets TC_ACT_UNSPEC (TCX_NEXT): ARP, neighbour discovery
 * and the rest go on through the stack.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* slots of `counts`; tests/bpf_progs/cni.py reads them by these numbers */
enum cni_slot {
	CNI_PEER = 0,	/* sent with bpf_redirect_peer */
	CNI_REDIRECT,	/* sent with bpf_redirect */
	CNI_PASS,	/* left to the stack */
	CNI__MAX,
};

/* an IPv4 address as ::ffff:a.b.c.d */
struct route_key {
	__u8 addr[16];
};

struct route {
	__u32 ifindex;	/* host order */
	__u32 peer;	/* 1: bpf_redirect_peer */
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct route_key);
	__type(value, struct route);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CNI__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &slot);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("tc")
int cni_redirect(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct route_key key = {};
	struct route *r;

	if ((void *)(eth + 1) > data_end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			goto pass;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			goto pass;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
	} else {
		goto pass;
	}
	r = bpf_map_lookup_elem(&routes, &key);
	if (!r)
		goto pass;
	__builtin_memcpy(eth->h_dest, r->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r->smac, ETH_ALEN);
	if (r->peer) {
		bump(CNI_PEER);
		return bpf_redirect_peer(r->ifindex, 0);
	}
	bump(CNI_REDIRECT);
	return bpf_redirect(r->ifindex, 0);
pass:
	bump(CNI_PASS);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "BSD-2-Clause";
