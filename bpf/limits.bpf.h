/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * limits.bpf.h: whether a session's copy may go, by its sampling, its own
 * rate limit and its priority under the node's copy budget. Copies refused
 * here are counted by the caller; originals are never involved.
 */
#ifndef LIMITS_BPF_H
#define LIMITS_BPF_H

#include "mirror_abi.h"
#include "maps.bpf.h"

/* 1 in s->sample copies, by a per-CPU count: exact on each CPU */
static __always_inline int sampled_out(const struct mirror_session *s)
{
	__u32 k = s->stats_id;
	__u64 *n;

	if (s->sample <= 1)
		return 0;
	n = bpf_map_lookup_elem(&session_samples, &k);
	if (!n)
		return 0;
	*n += 1;
	return (*n % s->sample) != 0;
}

static __always_inline __u64 refill(__u64 tokens, __u64 elapsed, __u64 rate)
{
	__u64 cap = rate * RATE_BURST_NS;

	tokens += elapsed * rate;
	return tokens > cap ? cap : tokens;
}

/*
 * Take one copy of `bytes` from the token buckets at `key` (rates `pps`
 * and `bps`, 0 = no limit), leaving at least `reserve` percent of each
 * bucket's capacity; or refuse.
 */
static __always_inline int over_rate(__u32 key, __u32 pps, __u64 bps,
				     __u32 bytes, __u32 reserve)
{
	__u64 now, elapsed, pkt_cost = 1000000000ULL,
		bit_cost = (__u64)bytes * 8 * 1000000000ULL, pkt_keep, bit_keep;
	struct session_limit *l;
	int over;

	if (!pps && !bps)
		return 0;
	l = bpf_map_lookup_elem(&session_limits, &key);
	if (!l)
		return 0;
	pkt_keep = pps * RATE_BURST_NS / 100 * reserve;
	bit_keep = bps * RATE_BURST_NS / 100 * reserve;
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&l->lock);
	elapsed = now - l->last_ns;
	if (elapsed > RATE_BURST_NS)
		elapsed = RATE_BURST_NS;
	l->last_ns = now;
	l->pkt_tokens = refill(l->pkt_tokens, elapsed, pps);
	l->bit_tokens = refill(l->bit_tokens, elapsed, bps);
	over = (pps && l->pkt_tokens < pkt_cost + pkt_keep) ||
	       (bps && l->bit_tokens < bit_cost + bit_keep);
	if (!over) {
		if (pps)
			l->pkt_tokens -= pkt_cost;
		if (bps)
			l->bit_tokens -= bit_cost;
	}
	bpf_spin_unlock(&l->lock);
	return over;
}

/* the node's copy budget, shared by every session, by priority */
static __always_inline int over_budget(const struct mirror_session *s,
				       __u32 bytes)
{
	struct mirror_config *cfg;
	__u32 k = 0, reserve;

	cfg = bpf_map_lookup_elem(&config, &k);
	if (!cfg || (!cfg->budget_pps && !cfg->budget_bps))
		return 0;
	reserve = s->priority == MIRROR_PRIO_HIGH  ? PRIO_RESERVE_HIGH :
		  s->priority == MIRROR_PRIO_LOW   ? PRIO_RESERVE_LOW :
						     PRIO_RESERVE_NORMAL;
	return over_rate(BUDGET_KEY, cfg->budget_pps, cfg->budget_bps, bytes,
			 reserve);
}

#endif /* LIMITS_BPF_H */
