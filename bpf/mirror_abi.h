/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * mirror_abi.h: the one definition of everything that crosses the kernel
 * boundary. Mirrored by src/bpftap/abi.py; tests/bpf/test_abi_layout.py
 * checks the mirror against the compiled object's BTF. Change both.
 */
#ifndef MIRROR_ABI_H
#define MIRROR_ABI_H

#include <linux/types.h>

/* rules per slot; the daemon fills the inactive slot, then flips */
#ifndef MAX_RULES
#define MAX_RULES 256
#endif
#define RULE_SLOTS 2
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
 * skb->mark of a clone on its way to the encap stage: tag, direction and
 * the absolute rule index. Set on the original only for the clone call.
 */
#define XFER_TAG 0xb7000000U
#define XFER_TAG_MASK 0xff000000U
#define XFER_EGRESS 0x00010000U
#define XFER_RULE_MASK 0x0000ffffU

enum mirror_dir {
	MIRROR_DIR_INGRESS = 1,
	MIRROR_DIR_EGRESS = 2,
};

enum mirror_action {
	MIRROR_ACT_MIRROR = 0,
	MIRROR_ACT_SKIP = 1,
};

enum mirror_tunnel {
	MIRROR_TUN_VXLAN = 1,
};

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
	MS__MAX,
};

/* map `config`, key 0: switches the daemon flips at run time */
struct mirror_config {
	__u32 active_slot;	 /* host order: 0 or 1, the live rule slot */
	__u32 rule_count[2];	 /* host order: rules in each slot */
	__u32 encap_ifindex;	 /* host order: the internal device clones go to */
	__u64 v6_sessions;	 /* host order: bit i = session slot i has an IPv6 remote */
};

/* map `rules`, key slot * MAX_RULES + position: one compiled rule */
struct mirror_rule {
	__be32 src_net[4];	/* network order; IPv4 in word 0 */
	__be32 src_mask[4];	/* network order; all zero = any */
	__be32 dst_net[4];
	__be32 dst_mask[4];
	__u64 sessions;		/* host order: bit i = session slot i */
	__u32 number;		/* host order: the rule's number in the config */
	__u16 sport_lo;		/* host order, inclusive; 0-65535 = any */
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 family;		/* 0 any, 4 or 6 */
	__u8 proto;		/* 0 any, else IPPROTO_* */
	__u8 dirs;		/* MIRROR_DIR_* mask */
	__u8 action;		/* MIRROR_ACT_* */
};

/* map `sessions`, key session slot: one destination, resolved by the daemon */
struct mirror_session {
	__be32 outer_src[4];	/* network order; IPv4 in word 0 */
	__be32 outer_dst[4];
	__u8 src_mac[6];	/* egress device's address */
	__u8 dst_mac[6];	/* next hop's address */
	__u32 ifindex;		/* host order: egress device; 0 = unresolved */
	__u32 vni;		/* host order: 24-bit VXLAN network identifier */
	__u16 mtu;		/* host order: egress device MTU */
	__u16 dst_port;		/* host order: UDP destination port */
	__u8 family;		/* 4 or 6: outer IP version */
	__u8 tunnel;		/* MIRROR_TUN_* */
	__u8 _pad[2];
};

/* map `rule_stats` (per CPU), key as in `rules`: first matches */
struct rule_stats {
	__u64 packets;
	__u64 bytes;
};

/* map `session_stats` (per CPU), key session slot: copies and why not */
struct session_stats {
	__u64 packets;		/* copies sent */
	__u64 bytes;		/* bytes of copies sent, outer headers included */
	__u64 unresolved;	/* no route or neighbour yet */
	__u64 oversize;		/* copy larger than the egress MTU */
	__u64 encap_fail;	/* growing or writing the copy failed */
};

#endif /* MIRROR_ABI_H */
