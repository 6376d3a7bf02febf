/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * empty.bpf.c: the floor of `bpftap bench` tier 1. A TC program that does
 * nothing but return bpftap's neutral verdict (TC_ACT_UNSPEC), so its
 * BPF_PROG_TEST_RUN time is the cost of dispatch alone.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return -1; /* TC_ACT_UNSPEC, as bpftap's MIRROR_PASS */
}

char LICENSE[] SEC("license") = "BSD-2-Clause";
