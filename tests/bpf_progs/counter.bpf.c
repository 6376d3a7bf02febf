/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * counter.bpf.c: a stand-in for somebody else's TC program (a CNI's, a
 * firewall's), written for bpftap's coexistence tests and sharing nothing
 * with bpftap's own sources.
 *
 * counter_ingress counts every packet, counts IPv4 UDP packets apart, and
 * drops IPv4 UDP packets to one destination port (settings[0], host order;
 * 0 drops nothing) with TC_ACT_SHOT. Everything else gets TC_ACT_UNSPEC,
 * which is TCX_NEXT in tcx: the programs behind it still run.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* slots of `counts`; tests/bpf_progs/counter.py reads them by these numbers */
enum counter_slot {
	CNT_PACKETS = 0,	/* every packet the program ran on */
	CNT_UDP4,		/* IPv4 UDP packets */
	CNT_DROPPED,		/* packets it returned TC_ACT_SHOT for */
	CNT__MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/* settings[0]: the UDP destination port to drop, host order */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &slot);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("tc")
int counter_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__u32 key = 0, *port;

	bump(CNT_PACKETS);
	/* only untagged IPv4 UDP is looked at any closer */
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return TC_ACT_UNSPEC;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_UNSPEC;
	bump(CNT_UDP4);
	/* the one verdict that ends the chain */
	port = bpf_map_lookup_elem(&settings, &key);
	if (port && *port && bpf_ntohs(udp->dest) == *port) {
		bump(CNT_DROPPED);
		return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "BSD-2-Clause";
