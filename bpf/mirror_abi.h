/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mirror_abi.h: the one definition of everything that crosses the kernel
 * boundary. Mirrored by src/bpftap/abi.py; tests/bpf/test_abi_layout.py
 * checks the mirror against the compiled object's BTF. Change both.
 */
#ifndef MIRROR_ABI_H
#define MIRROR_ABI_H

#include <linux/types.h>
/* struct bpf_spin_lock, for struct session_seq */
#include <linux/bpf.h>

/* rules per slot; the daemon fills the inactive slot, then flips */
#ifndef MAX_RULES
#define MAX_RULES 16384
#endif
#define RULE_SLOTS 2
/* a rule set as a bitmap: 64 rules a word, 64 words a summary word */
#define RULE_WORDS (MAX_RULES / 64)
#define SUMMARY_WORDS (RULE_WORDS / 64)
#define COARSE_RULES (MAX_RULES / 32) /* rule positions per bit of a struct class_ref's coarse mask */
/* classes per slot in `class_bits` unless the daemon sizes it at load */
#ifndef CLASS_CAPACITY
#define CLASS_CAPACITY 1024
#endif
/* keys of a port dimension: each port, then one for packets without ports */
#define PORT_KEYS 65537
#define NO_PORTS 65536
/* keys of the meta dimension: direction (2) x family (2) x protocol (256) */
#define META_KEYS 1024
/* keys of the VLAN dimension: outer tag id 0-4095, then 4096 for untagged */
#define VLAN_KEYS 4097
/* keys of the TCP flags dimension: the flags byte, then 256 for not TCP */
#define FLAG_KEYS 257
#define NOT_TCP 256
/* interfaces per slot in `iface_classes` (ifindex 0: any other) */
#define IFACE_KEYS 1024
#ifndef MAX_SESSIONS
#define MAX_SESSIONS 64
#endif
/* 802.1Q/802.1ad tags parsed in the frame (QinQ) */
#define MAX_VLAN_TAGS 2
/* IPv6 extension headers walked before giving up on the L4 header */
#define MAX_IPV6_EXT 6

/*
 * The neutral verdict: TC_ACT_UNSPEC (-1, TCX_NEXT in tcx). Any other
 * verdict ends the chain, and a mirror must never decide the fate of the
 * original: programs behind bpftap (Cilium, Calico) must still run.
 */
#define MIRROR_PASS (-1)

/* skb->mark of a finished copy: the loop guard; originals with it pass */
#define MIRROR_COPY_MARK 0x62746170U /* "btap" */

/*
 * skb->mark on the way between the stages, drawn once (bit 31 on the left):
 *  31   28 27     22 21     16  15  14                                  0
 * +-------+---------+---------+---+-------------------------------------+
 * |  0xb  |  pass   | source  | E |  rule: slot * MAX_RULES + position  |  XFER_TAG
 * +-------+---------+---------+---+-------------------------------------+
 *  31   28 27                16 15          8 7                         0
 * +-------+-------------------+--------------+--------------------------+
 * |  0xc  |  0                |  session key |  fragment index          |  FRAG_TAG
 * +-------+-------------------+--------------+--------------------------+
 *  0x62746170 ("btap", tag nibble 0x6): MIRROR_COPY_MARK, a finished copy
 *
 * XFER_TAG: a clone from stage 1 on its way to the encap stage. Set on the
 * original only for the clone calls (act() restores its mark).
 *   pass    0 for the rule's sessions that take the whole frame; n + 1 for
 *           session slot n alone: a truncating session (one clone each,
 *           cut to its snaplen, so no copy is cut short for another), or a
 *           GSO session when the original is a super-packet or a TCP frame
 *           (one clone each, encapsulated whole by mirror_gso: gso.bpf.h).
 *   source  the source interface as an id (1..MAX_SOURCES-1, 0 unknown):
 *           stage 1 finds it in `source_ids` (ifindex -> id), stage 2 turns
 *           it back into the ifindex with `source_ifindexes` (id -> ifindex);
 *           the daemon writes both. (Not cb[]: the internal veth's NAPI/XDP
 *           receive path reuses it.) E: XFER_EGRESS, seen on egress.
 *   rule    the absolute rule index, the key in `rules`.
 *
 * FRAG_TAG: an encapsulated copy larger than its egress MTU, sent back
 * through the internal device once per outer fragment (the `oversize:
 * fragment` slow path): the session's key in `sessions` and which fragment
 * this clone becomes. The encap stage cuts each clone down to its fragment
 * and sends it; nothing else in the packet changes on the way.
 */
#define XFER_TAG 0xb0000000U
#define XFER_TAG_MASK 0xf0000000U
#define XFER_PASS_SHIFT 22
#define XFER_PASS_MASK 0x0fc00000U
#define XFER_SOURCE_SHIFT 16
#define XFER_SOURCE_MASK 0x003f0000U
#define XFER_EGRESS 0x00008000U
#define XFER_RULE_MASK 0x00007fffU
#define MAX_SOURCES 64

#define FRAG_TAG 0xc0000000U
#define FRAG_SLOT_SHIFT 8
#define FRAG_SLOT_MASK 0x0000ff00U
#define FRAG_INDEX_MASK 0x000000ffU
/* outer fragments of one copy at most: a 64 KiB frame over a 1280-byte MTU */
#define MAX_FRAGS 64

/*
 * each field holds its largest value (MAX_RULES and MAX_SESSIONS may be
 * overridden); the fields do not overlap (their sum is their union); the
 * tag nibble tells the marks apart. (clang-format reads A * B as a type.)
 */
/* clang-format off */
_Static_assert(RULE_SLOTS * MAX_RULES - 1 <= XFER_RULE_MASK, "RULE_SLOTS * MAX_RULES overflows XFER_RULE_MASK");
_Static_assert((XFER_RULE_MASK & (XFER_RULE_MASK + 1)) == 0, "XFER_RULE_MASK: contiguous bits from bit 0");
_Static_assert(MAX_SESSIONS <= 64, "session sets are 64-bit masks");
_Static_assert(MAX_SESSIONS - 1 <= XFER_PASS_MASK >> XFER_PASS_SHIFT, "passes overflow XFER_PASS_MASK");
_Static_assert(MAX_SOURCES - 1 <= XFER_SOURCE_MASK >> XFER_SOURCE_SHIFT, "source ids overflow XFER_SOURCE_MASK");
_Static_assert(RULE_SLOTS * MAX_SESSIONS - 1 <= FRAG_SLOT_MASK >> FRAG_SLOT_SHIFT, "session keys overflow FRAG_SLOT_MASK");
_Static_assert(MAX_FRAGS - 1 <= FRAG_INDEX_MASK, "fragment indexes overflow FRAG_INDEX_MASK");
_Static_assert(0ULL + XFER_TAG_MASK + XFER_PASS_MASK + XFER_SOURCE_MASK + XFER_EGRESS + XFER_RULE_MASK ==
	       (XFER_TAG_MASK | XFER_PASS_MASK | XFER_SOURCE_MASK | XFER_EGRESS | XFER_RULE_MASK), "XFER_* overlap");
_Static_assert(0ULL + XFER_TAG_MASK + FRAG_SLOT_MASK + FRAG_INDEX_MASK ==
	       (XFER_TAG_MASK | FRAG_SLOT_MASK | FRAG_INDEX_MASK), "FRAG_* overlap");
_Static_assert((XFER_TAG & ~XFER_TAG_MASK) == 0 &&
	       (FRAG_TAG & ~XFER_TAG_MASK) == 0 && XFER_TAG != FRAG_TAG, "tags: in XFER_TAG_MASK, apart");
_Static_assert((MIRROR_COPY_MARK & XFER_TAG_MASK) != XFER_TAG &&
	       (MIRROR_COPY_MARK & XFER_TAG_MASK) != FRAG_TAG, "MIRROR_COPY_MARK looks like a tagged clone");
/* clang-format on */

enum mirror_dir {
	MIRROR_DIR_INGRESS = 1,
	MIRROR_DIR_EGRESS = 2,
};

enum mirror_action {
	MIRROR_ACT_MIRROR = 0,
	MIRROR_ACT_SKIP = 1,
};

/* a session's tunnel; each is built by bpf/tunnels.bpf.h and src/bpftap/tunnels/ */
enum mirror_tunnel {
	MIRROR_TUN_VXLAN = 1,	/* UDP, RFC 7348 */
	MIRROR_TUN_GENEVE = 2,	/* UDP, RFC 8926, with the bpftap option below */
	MIRROR_TUN_GRE = 3,	/* GRE, Transparent Ethernet Bridging (0x6558) */
	MIRROR_TUN_ERSPAN2 = 4,	/* GRE 0x88BE, ERSPAN type II */
	MIRROR_TUN_ERSPAN3 = 5,	/* GRE 0x22EB, ERSPAN type III */
};

/* mirror_session.flags */
#define MIRROR_SF_KEY 0x01 /* GRE: a key follows the GRE header */
#define MIRROR_SF_SEQ 0x02 /* GRE: a sequence number follows (always for ERSPAN) */
#define MIRROR_SF_PLATFORM 0x04 /* ERSPAN III: the platform sub-header (O bit) follows */
#define MIRROR_SF_RESEGMENT 0x08 /* oversize: resegment: a GSO copy over the MTU gets smaller segments */
#define MIRROR_SF_LINK 0x10 /* the egress device is a listed link (config links:): copies take from its bucket */

/* outer headers of a copy, outer Ethernet included: at most this long */
#define MIRROR_HDR_MAX 86

/*
 * bpftap's GENEVE option: class from the experimental range 0xFFF0-0xFFFF
 * (RFC 8926 section 7), critical bit clear so receivers may ignore it.
 * 12 bytes of data: version (1), direction (MIRROR_DIR_*, 0 unknown),
 * 2 reserved bytes, source ifindex (0 unknown), session sequence number.
 */
#define GENEVE_OPT_CLASS_BPFTAP 0xfffb
#define GENEVE_OPT_TYPE_SOURCE 0x01
#define GENEVE_OPT_VERSION 1

/*
 * ERSPAN type III timestamps: IEEE 1588 granularity, the packet's
 * CLOCK_REALTIME nanoseconds in the header and its seconds in a platform
 * sub-header of ID 3 (which also holds the source ifindex, 14 bits).
 */
#define ERSPAN3_GRA_1588 2
#define ERSPAN3_PLATFORM_ID 3

/* global counters, one per-CPU slot each: every exit of both stages */
enum mirror_stat {
	MS_SEEN = 0,	  /* packets seen by a source program */
	MS_LOOP,	  /* a copy seen again on a source: passed */
	MS_MALFORMED,	  /* truncated or invalid headers: passed */
	MS_NOT_IP,	  /* neither IPv4 nor IPv6: passed */
	MS_NO_MATCH,	  /* no rule matched */
	MS_SKIPPED,	  /* first match was a skip rule */
	MS_MATCHED,	  /* first match was a mirror rule */
	MS_CLONE_FAIL,	  /* clone to the encap device failed */
	MS_XFER_BAD,	  /* packet on the encap device without our tag */
	MS_COPY_SENT,	  /* copies handed to the egress device */
	MS_UNRESOLVED,	  /* session without route or neighbour */
	MS_OVERSIZE,	  /* copy larger than the egress MTU */
	MS_ENCAP_FAIL,	  /* growing or writing the copy failed */
	MS_VLAN_DEPTH,	  /* more tags than MAX_VLAN_TAGS */
	MS_SAMPLED_OUT,	  /* copy not the 1 in the session's sample */
	MS_RATE_LIMITED,  /* copy over the session's rate limit */
	MS_PAUSED,	  /* packets passed while mirroring is paused */
	MS_LOG_LOST,	  /* kernel log records lost: `events` was full */
	MS_SHED,	  /* copy over the copy budget or its link's room, for its priority */
	MS_FRAGMENTS,	  /* outer fragments sent (copies over the egress MTU) */
	MS_RING_FULL,	  /* copy not sent: `copies` was full (redirect_chain off) */
	MS_GSO_SENT,	  /* GSO super-packets encapsulated whole (their segments count in MS_COPY_SENT) */
	MS_GSO_SLOW,	  /* GSO super-packets of a GSO session sent on to the per-segment path */
	MS_FILTER_RUN,	  /* packets whose first candidate rule has a filter: filters evaluated */
	MS_FILTER_FAIL,	  /* no filter program (or resume entry) to tail-call: passed */
	MS_NO_ENTRY,	  /* stage 2: a map entry its mark or slot names is missing: dropped */
	MS__MAX,
};

/* map `config`, key 0: switches the daemon flips at run time */
struct mirror_config {
	__u32 active_slot;	 /* host order: 0 or 1, the live rule slot */
	__u32 rule_count[2];	 /* host order: rules in each slot */
	__u32 encap_ifindex;	 /* host order: the internal device clones go to */
	__u32 class_capacity;	 /* host order: class ids per slot in `class_bits` */
	__u32 paused;		 /* host order: non-zero: copy nothing (`bpftap pause`) */
	__u32 budget_pps;	 /* host order: copies per second for all sessions (0: none) */
	__u32 ring_copies;	 /* host order: non-zero: stage 2 puts finished copies in
				  * `copies` for the daemon to send instead of redirecting
				  * them (config `redirect_chain: false`) */
	__u64 budget_bps;	 /* host order: copy bits per second for all sessions (0: none) */
};

/*
 * Classification: each packet field maps to a class (an id in `class_bits`)
 * whose bitmap holds the rules that field allows; the first rule is the
 * lowest bit set in all dimensions' bitmaps.
 */
enum mirror_dim {
	MIRROR_DIM_SRC = 0,	/* source address: `addr_classes` */
	MIRROR_DIM_DST,		/* destination address: `addr_classes` */
	MIRROR_DIM_SPORT,	/* source port: `port_classes` */
	MIRROR_DIM_DPORT,	/* destination port: `port_classes` */
	MIRROR_DIM_META,	/* direction, family, protocol: `meta_classes` */
	MIRROR_DIM_VLAN,	/* outer VLAN id: `vlan_classes` */
	MIRROR_DIM_TCP_FLAGS,	/* TCP flags byte: `flag_classes` */
	MIRROR_DIM_IFACE,	/* source interface: `iface_classes` */
	MIRROR_DIM__MAX,
};

/* map `addr_classes` (LPM trie) key: slot, dimension, family, address */
struct addr_key {
	__u32 prefixlen;	/* host order: 32 + the CIDR's length */
	__u8 slot;
	__u8 dim;		/* MIRROR_DIM_SRC or MIRROR_DIM_DST */
	__u8 family;		/* 4 or 6 */
	__u8 _pad;
	__u8 addr[16];		/* network order; IPv4 in the first 4 bytes */
};

/* map `iface_classes` (hash) key: slot and the source interface */
struct iface_key {
	__u32 slot;		/* host order */
	__u32 ifindex;		/* host order; 0 = any interface not listed */
};

/* maps `meta_classes`, `port_classes`: a packet whose two masks share no bit matches no rule */
struct class_ref {
	__u32 id;		/* host order: the class (`class_bits`) */
	__u32 coarse;		/* host order: bit b = a rule at positions b * COARSE_RULES + 0 .. COARSE_RULES - 1 */
};

/* map `class_bits`, key slot * class_capacity + class id: a set of rules */
struct rule_bits {
	__u64 summary[SUMMARY_WORDS];	/* host order: bit j = words[j] != 0 */
	__u64 words[RULE_WORDS];	/* host order: bit i = rule at position i */
};

/* map `rules`, key slot * MAX_RULES + position: what the first match does */
struct mirror_rule {
	__u64 sessions;		/* host order: bit i = session slot i */
	__u64 snap_sessions;	/* host order: the sessions that truncate (snaplen) */
	__u64 gso_sessions;	/* host order: the sessions that take super-packets and TCP frames whole */
	__u32 number;		/* host order: the rule's number in the config */
	__u16 stats_id;		/* host order: key in `rule_stats`, kept across reloads */
	__u8 action;		/* MIRROR_ACT_* */
	__u8 flags;		/* MIRROR_RF_* */
};

/* mirror_rule.flags */
#define MIRROR_RF_GROUP 0x01 /* a session of the rule is a collector group */
#define MIRROR_RF_FILTER 0x02 /* the rule has a pcap-filter expression (below) */

/*
 * Rule filters (config `filter:`, pcap-filter expressions). The daemon
 * translates a rule set's filters into one generated SCHED_CLS program per
 * direction (src/bpftap/filter) and puts it in the PROG_ARRAY `filter_progs`
 * at FILTER_PROG(slot, dir). When the first rule stage 1 finds for a packet
 * has MIRROR_RF_FILTER, stage 1 tail-calls that program; it evaluates every
 * filter of the slot, sets the bit of each filter rule whose expression
 * accepts the packet in `filter_bits` (per CPU, key: slot; every other bit
 * stays 1) and clears the others', then tail-calls stage 1's resume entry
 * FILTER_RESUME + dir - 1, which classifies again with that bitmap as one
 * more dimension. A packet whose first candidate has no filter costs nothing.
 */
#define MAX_FILTER_RULES 64
#define FILTER_PROGS 8
#define FILTER_PROG(slot, dir) ((slot) * 2 + (dir) - 1)
#define FILTER_RESUME 4

/*
 * map `sessions`, key rule slot * MAX_SESSIONS + session slot: one
 * destination, resolved by the daemon. Each rule slot has its own session
 * table, written before the slot goes live, so a rule's session bits never
 * point at another rule set's sessions.
 */
struct mirror_session {
	__be32 outer_src[4];	/* network order; IPv4 in word 0 */
	__be32 outer_dst[4];
	__u8 src_mac[6];	/* egress device's address */
	__u8 dst_mac[6];	/* next hop's address */
	__u32 ifindex;		/* host order: egress device; 0 = unresolved */
	__u32 tun_id;		/* host order: VNI (24 bits), GRE key, ERSPAN session id (10 bits) */
	__u16 mtu;		/* host order: egress device MTU */
	__u16 dst_port;		/* host order: UDP destination port (VXLAN, GENEVE) */
	__u16 hdr_len;		/* host order: outer header bytes, Ethernet included */
	__u8 family;		/* 4 or 6: outer IP version */
	__u8 tunnel;		/* MIRROR_TUN_* */
	__u8 flags;		/* MIRROR_SF_* */
	__u8 group_size;	/* host order: collectors of the group from this slot on (0, 1: one) */
	__u16 stats_id;		/* host order: key in `session_stats`, `session_seqs`, `session_limits` */
	__u32 sample;		/* host order: send 1 copy in this many (0, 1: all) */
	__u32 rate_pps;		/* host order: copies per second at most (0: no limit) */
	__u64 rate_bps;		/* host order: copy bits per second at most (0: no limit) */
	__u16 snaplen;		/* host order: inner frame bytes kept (0: all) */
	__u8 priority;		/* MIRROR_PRIO_*: how far it may drain the copy budget */
	__u8 _pad2;
	__u32 _pad3;
};

/*
 * map `session_seqs`, key a session's stats_id: the last sequence number a
 * session's copies carried (GRE, ERSPAN, the GENEVE option). A spin lock,
 * not an atomic fetch-and-add: those need kernel 5.12 and clang -mcpu=v3.
 */
struct session_seq {
	struct bpf_spin_lock lock;	/* the encap program's only */
	__u32 seq;			/* host order; the first copy carries 1 */
};

/* map `clock`, key 0: CLOCK_REALTIME minus CLOCK_MONOTONIC, written by the daemon */
struct mirror_clock {
	__u64 realtime_offset_ns;	/* host order; 0 = never written */
};

/* map `rule_stats` (per CPU), key a rule's stats_id: its first matches */
struct rule_stats {
	__u64 packets;
	__u64 bytes;
};

/* map `session_stats` (per CPU), key a session's stats_id: copies and why not */
struct session_stats {
	__u64 packets;		/* copies sent */
	__u64 bytes;		/* bytes of copies sent, outer headers included */
	__u64 unresolved;	/* no route or neighbour yet */
	__u64 oversize;		/* copy larger than the egress MTU, not sent */
	__u64 encap_fail;	/* growing or writing the copy failed */
	__u64 sampled_out;	/* not the 1 in `sample` */
	__u64 rate_limited;	/* over the session's rate limit */
	__u64 truncated;	/* copies sent cut to the session's snaplen */
	__u64 shed;		/* over the copy budget or its link's room, for its priority */
	__u64 fragments;	/* outer fragments sent for copies over the MTU */
	__u64 ring_full;	/* `copies` full (redirect_chain off) */
	__u64 gso;		/* GSO super-packets encapsulated whole (segments in `packets`) */
};

/*
 * map `frag_ident`, key 0: the identification of the next fragmented copy
 * (16 bits of it in IPv4, 32 in the IPv6 fragment header). One counter for
 * all CPUs, so concurrent copies to one collector never share one.
 */
struct frag_ident {
	struct bpf_spin_lock lock;	/* the encap program's only */
	__u32 next;			/* host order */
};

/*
 * Priorities under the node-wide copy budget: a session may take from the
 * budget's bucket only while more than its reserve (a share of the bucket,
 * in percent) is left, so low-priority copies are shed first.
 */
enum mirror_priority {
	MIRROR_PRIO_HIGH = 0,	/* reserve 0 %: may empty the bucket */
	MIRROR_PRIO_NORMAL = 1,	/* reserve 20 % */
	MIRROR_PRIO_LOW = 2,	/* reserve 50 % */
};
#define PRIO_RESERVE_HIGH 0
#define PRIO_RESERVE_NORMAL 20
#define PRIO_RESERVE_LOW 50
/* `session_limits` key of the budget's bucket: after the sessions' */
#define BUDGET_KEY (RULE_SLOTS * MAX_SESSIONS)

/*
 * map `group_buckets`, key (rule slot * MAX_SESSIONS + first member's slot)
 * * GROUP_BUCKETS + bucket: which member (0 .. group_size - 1) takes the
 * flows whose symmetric hash falls in the bucket (rendezvous hashing, so
 * removing a collector moves only its own flows)
 */
#define GROUP_BUCKETS 256

/*
 * The kernel log: fixed records in the ring buffer `events`, formatted and
 * rate-limited by the agent. Only the copy path logs, never the path every
 * original takes.
 */
enum mirror_event {
	MIRROR_EV_CLONE_FAIL = 1,	/* stage 1; arg0: the error */
	MIRROR_EV_UNRESOLVED,		/* session has no next hop */
	MIRROR_EV_OVERSIZE,		/* arg0: copy length, arg1: MTU */
	MIRROR_EV_ENCAP_FAIL,		/* arg0: outer header length */
	MIRROR_EV_RATE_LIMITED,		/* over the session's rate limit */
	MIRROR_EV_VLAN_DEPTH,		/* more tags than MAX_VLAN_TAGS */
	MIRROR_EV_SHED,			/* over the copy budget or its link's room; arg0: priority */
	MIRROR_EV_FRAG_FAIL,		/* arg0: fragment index, arg1: MTU */
};

enum mirror_level {
	MIRROR_LOG_DEBUG = 0,
	MIRROR_LOG_INFO,
	MIRROR_LOG_WARN,
	MIRROR_LOG_ERROR,
};

/* one kernel log record */
struct mirror_log {
	__u64 ts_ns;		/* host order: bpf_ktime_get_ns() */
	__u32 code;		/* enum mirror_event */
	__u32 level;		/* enum mirror_level */
	__u32 ifindex;		/* host order: source interface, 0 unknown */
	__u32 rule;		/* host order: rule number, 0 none */
	__u32 session;		/* host order: session stats_id + 1, 0 none */
	__u32 _pad;
	__u64 arg[2];		/* host order: per event, see enum mirror_event */
};

#define EVENTS_BYTES (256 * 1024) /* bytes of the `events` ring buffer */

/*
 * With redirect_chain off, stage 2 redirects nothing: each finished copy
 * (outer headers included, as the egress device would send it) goes into
 * the `copies` ring buffer as a struct mirror_copy of COPY_HDR_LEN + len
 * bytes, and the daemon sends it from an AF_PACKET socket. Copies over
 * the egress MTU or longer than COPY_BYTES_MAX are counted oversize.
 */
#define COPY_BYTES_MAX (9216 + MIRROR_HDR_MAX)
#define COPIES_BYTES (4 * 1024 * 1024)
#define COPY_HDR_LEN 8

struct mirror_copy {
	__u32 ifindex;			/* host order: the egress device */
	__u32 len;			/* host order: bytes of the copy */
	__u8 bytes[COPY_BYTES_MAX];	/* the first `len` are the copy */
};

/* burst of a session's rate limit: this much time's worth of copies */
#define RATE_BURST_NS 100000000ULL

/*
 * map `session_limits`, key a session's stats_id: token buckets in
 * units of (packets or bits) x nanoseconds, so refills need no division
 */
struct session_limit {
	struct bpf_spin_lock lock;	/* the encap program's only */
	__u32 _pad;
	__u64 pkt_tokens;	/* host order: packet-ns; a copy costs 1e9 */
	__u64 bit_tokens;	/* host order: bit-ns; a copy costs its bits x 1e9 */
	__u64 last_ns;		/* host order: bpf_ktime_get_ns() of the last refill */
};

/*
 * Links (config `links:`): egress devices whose capacity copies share
 * with originals. Each has a token bucket (`link_state`) that fills at
 * the rate the agent sets (`link_rates`: the link's capacity less its
 * headroom, cut while its queue drops or backs up). mirror_link, on the
 * link's egress, takes every original's bytes from it, never refusing
 * one (the bucket may go into debt); stage 2 takes a copy leaving through
 * the link only while the bucket holds it and the priority's reserve (as
 * for the copy budget): copies get what originals leave, at once. Both
 * maps are keyed by the link's ifindex; a device in neither is no listed
 * link and its copies are not limited here.
 */
#define MAX_LINKS 64
/* burst of a link's bucket: a short one, so copies never flood its queue */
#define LINK_BURST_NS 5000000U

struct link_rate {
	__u64 bps;		/* host order: the bucket's fill rate, bits per second */
};

struct link_state {
	struct bpf_spin_lock lock;
	__u32 _pad;
	__s64 bit_tokens;	/* host order: bit-ns, as in `session_limit`; < 0: debt */
	__u64 last_ns;		/* host order: bpf_ktime_get_ns() of the last refill */
	__u64 orig_bytes;	/* host order: originals' bytes out (wire frames' headers counted) */
	__u64 copies;		/* host order: copies admitted (wire frames) */
	__u64 bytes;		/* host order: their bytes, outer headers included */
	__u64 shed;		/* host order: copies refused (wire frames) */
};

#endif /* MIRROR_ABI_H */
