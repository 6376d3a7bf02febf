/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * limits.bpf.h: whether a session's copy may go, by its sampling, its own
 * rate limit and its priority under the node's copy budget. Copies refused
 * here are counted by the caller; originals are never involved.
 */
#ifndef LIMITS_BPF_H
#define LIMITS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

static __always_inline __u32 prio_reserve(const struct mirror_session *s)
{
	return s->priority == MIRROR_PRIO_HIGH ? PRIO_RESERVE_HIGH :
	       s->priority == MIRROR_PRIO_LOW  ? PRIO_RESERVE_LOW :
						 PRIO_RESERVE_NORMAL;
}

/* the node's copy budget, shared by every session, by priority */
static __always_inline int over_budget(const struct mirror_session *s,
				       __u32 bytes)
{
	struct mirror_config *cfg;
	__u32 k = 0;

	cfg = bpf_map_lookup_elem(&config, &k);
	if (!cfg || (!cfg->budget_pps && !cfg->budget_bps))
		return 0;
	return over_rate(BUDGET_KEY, cfg->budget_pps, cfg->budget_bps, bytes,
			 prio_reserve(s));
}

/*
 * A listed link's bucket at `ifindex`, refilled to now, or NULL (no
 * listed link). Returns with the bucket locked; *cap is its capacity.
 */
static __always_inline struct link_state *link_refill(__u32 ifindex,
						      __s64 *cap)
{
	struct link_rate *r;
	struct link_state *l;
	__u64 now, elapsed, rate;

	r = bpf_map_lookup_elem(&link_rates, &ifindex);
	if (!r)
		return NULL;
	l = bpf_map_lookup_elem(&link_state, &ifindex);
	if (!l)
		return NULL;
	rate = r->bps;
	*cap = rate * LINK_BURST_NS;
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&l->lock);
	elapsed = now - l->last_ns;
	if (elapsed > RATE_BURST_NS) /* rate x elapsed stays in 63 bits */
		elapsed = RATE_BURST_NS;
	l->last_ns = now;
	l->bit_tokens += elapsed * rate;
	if (l->bit_tokens > *cap)
		l->bit_tokens = *cap;
	return l;
}

/* an original of `bytes` leaving a listed link: taken, never refused */
static __always_inline void link_original(__u32 ifindex, __u64 bytes)
{
	struct link_state *l;
	__s64 cap;

	l = link_refill(ifindex, &cap);
	if (!l)
		return;
	l->bit_tokens -= bytes * 8 * 1000000000ULL;
	if (l->bit_tokens < -cap) /* a debt of one burst at most */
		l->bit_tokens = -cap;
	l->orig_bytes += bytes;
	bpf_spin_unlock(&l->lock);
}

/*
 * The room on the session's egress link, if it is a listed one: `bytes`
 * for `n` wire frames, taken from the link's bucket down to the
 * priority's reserve, or refused; counted in `link_state` either way.
 * A copy larger than the bucket (a GSO copy on a slow link) goes when the
 * bucket is full, and leaves it in debt.
 */
static __always_inline int over_link(const struct mirror_session *s,
				     __u32 bytes, __u32 n)
{
	struct link_state *l;
	__s64 cap, need, cost = (__s64)bytes * 8 * 1000000000LL;
	int over;

	if (!(s->flags & MIRROR_SF_LINK)) /* no lookup for the others */
		return 0;
	l = link_refill(s->ifindex, &cap);
	if (!l)
		return 0;
	need = cost + (__s64)((__u64)cap / 100 * prio_reserve(s));
	if (need > cap)
		need = cap;
	over = !cap || l->bit_tokens < need;
	if (over) {
		l->shed += n;
	} else {
		l->bit_tokens -= cost;
		l->copies += n;
		l->bytes += bytes;
	}
	bpf_spin_unlock(&l->lock);
	return over;
}

/* a copy over_link admitted that is not sent after all (the copy budget refused it): given back, not counted */
static __always_inline void link_refund(const struct mirror_session *s,
					__u32 bytes, __u32 n)
{
	struct link_state *l;
	__s64 cap;

	l = link_refill(s->ifindex, &cap);
	if (!l)
		return;
	l->bit_tokens += (__s64)bytes * 8 * 1000000000LL;
	l->copies -= n;
	l->bytes -= bytes;
	bpf_spin_unlock(&l->lock);
}

/* the link's room, then the node's copy budget: a copy either refuses is shed, and neither pays for it */
static __always_inline int shed_copy(const struct mirror_session *s,
				     __u32 bytes, __u32 n)
{
	if (over_link(s, bytes, n))
		return 1;
	if (!over_budget(s, bytes))
		return 0;
	link_refund(s, bytes, n);
	return 1;
}

#endif /* LIMITS_BPF_H */
