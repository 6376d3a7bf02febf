"""ctypes mirror of bpf/mirror_abi.h: structs, enums, limits and names.

tests/bpf/test_abi_layout.py compares every struct here with the BTF of the
compiled object, and every constant with the header, so the two cannot drift.
"""

from __future__ import annotations

import ctypes
import enum
from pathlib import Path

MAX_RULES = 16384
RULE_SLOTS = 2
RULE_WORDS = MAX_RULES // 64
SUMMARY_WORDS = RULE_WORDS // 64
COARSE_RULES = MAX_RULES // 32
CLASS_CAPACITY = 1024
PORT_KEYS = 65537
NO_PORTS = 65536
META_KEYS = 1024
VLAN_KEYS = 4097
FLAG_KEYS = 257
NOT_TCP = 256
IFACE_KEYS = 1024
MAX_SESSIONS = 64
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT = 6

MIRROR_PASS = -1
MIRROR_COPY_MARK = 0x62746170
XFER_TAG = 0xB0000000
XFER_TAG_MASK = 0xF0000000
XFER_PASS_SHIFT = 22
XFER_PASS_MASK = 0x0FC00000
XFER_EGRESS = 0x00008000
XFER_RULE_MASK = 0x00007FFF
XFER_SOURCE_SHIFT = 16
XFER_SOURCE_MASK = 0x003F0000
MAX_SOURCES = 64
FRAG_TAG = 0xC0000000
FRAG_SLOT_SHIFT = 8
FRAG_SLOT_MASK = 0x0000FF00
FRAG_INDEX_MASK = 0x000000FF
MAX_FRAGS = 64

# struct mirror_session.flags
MIRROR_SF_KEY = 0x01
MIRROR_SF_SEQ = 0x02
MIRROR_SF_PLATFORM = 0x04
MIRROR_SF_RESEGMENT = 0x08
MIRROR_SF_LINK = 0x10
MIRROR_HDR_MAX = 86
# wire constants of the tunnels (bpf/tunnels.bpf.h and bpftap.tunnels use these)
GENEVE_OPT_CLASS_BPFTAP = 0xFFFB
GENEVE_OPT_TYPE_SOURCE = 0x01
GENEVE_OPT_VERSION = 1
ERSPAN3_GRA_1588 = 2
ERSPAN3_PLATFORM_ID = 3

# program and map names, as in bpf/mirror_tc.bpf.c (checked by a test)
PROG_INGRESS = "mirror_ingress"
PROG_EGRESS = "mirror_egress"
PROG_ENCAP = "mirror_encap"
PROG_GSO = "mirror_gso"
PROG_NAPI = "mirror_napi"
PROG_LINK = "mirror_link"
# a pod source with `attach: inside` (bpf/inside.bpf.h): the pod end's egress, the node end's ingress
PROG_XFER_OUT = "mirror_xfer_out"
PROG_ENCAP_INSIDE = "mirror_encap_inside"
# stage 1 again, after a rule set's filters ran (FILTER_RESUME in filter_progs)
PROG_INGRESS_FILTERED = "mirror_ingress_filtered"
PROG_EGRESS_FILTERED = "mirror_egress_filtered"
PROGRAMS = frozenset({PROG_INGRESS, PROG_EGRESS, PROG_ENCAP, PROG_GSO, PROG_NAPI, PROG_LINK, PROG_INGRESS_FILTERED,
                      PROG_EGRESS_FILTERED, PROG_XFER_OUT, PROG_ENCAP_INSIDE})
# the names as the kernel keeps them (BPF_OBJ_NAME_LEN 16 with the NUL): how an attached program is known
KERNEL_PROGRAM_NAMES = frozenset(name[:15] for name in PROGRAMS)
MAP_CONFIG = "config"
MAP_RULES = "rules"
MAP_ADDR_CLASSES = "addr_classes"
MAP_PORT_CLASSES = "port_classes"
MAP_META_CLASSES = "meta_classes"
MAP_CLASS_BITS = "class_bits"
MAP_VLAN_CLASSES = "vlan_classes"
MAP_FLAG_CLASSES = "flag_classes"
MAP_IFACE_CLASSES = "iface_classes"
MAP_SESSIONS = "sessions"
MAP_STATS = "stats"
MAP_RULE_STATS = "rule_stats"
MAP_SESSION_STATS = "session_stats"
MAP_SESSION_SEQS = "session_seqs"
MAP_SESSION_LIMITS = "session_limits"
MAP_GROUP_BUCKETS = "group_buckets"
MAP_EVENTS = "events"
MAP_SESSION_SAMPLES = "session_samples"
MAP_CLOCK = "clock"
MAP_SOURCE_IDS = "source_ids"
MAP_SOURCE_IFINDEXES = "source_ifindexes"
MAP_COPIES = "copies"
MAP_LINK_RATES = "link_rates"
MAP_LINK_STATE = "link_state"
MAP_FILTER_BITS = "filter_bits"
MAP_FILTER_PROGS = "filter_progs"

OBJECT_NAME = "mirror_tc.bpf.o"


class MirrorDir(enum.IntFlag):
    """`enum mirror_dir`: a rule's directions, as a mask."""

    INGRESS = 1
    EGRESS = 2


class MirrorAction(enum.IntEnum):
    """`enum mirror_action`."""

    MIRROR = 0
    SKIP = 1


class MirrorTunnel(enum.IntEnum):
    """`enum mirror_tunnel`; the config spells each in lower case (`tunnel: erspan3`)."""

    VXLAN = 1
    GENEVE = 2
    GRE = 3
    ERSPAN2 = 4
    ERSPAN3 = 5


class MirrorDim(enum.IntEnum):
    """`enum mirror_dim`: the classifier's dimensions."""

    SRC = 0
    DST = 1
    SPORT = 2
    DPORT = 3
    META = 4
    VLAN = 5
    TCP_FLAGS = 6
    IFACE = 7


class MirrorStat(enum.IntEnum):
    """`enum mirror_stat`: one per-CPU counter per exit of both programs."""

    SEEN = 0
    LOOP = 1
    MALFORMED = 2
    NOT_IP = 3
    NO_MATCH = 4
    SKIPPED = 5
    MATCHED = 6
    CLONE_FAIL = 7
    XFER_BAD = 8
    COPY_SENT = 9
    UNRESOLVED = 10
    OVERSIZE = 11
    ENCAP_FAIL = 12
    VLAN_DEPTH = 13
    SAMPLED_OUT = 14
    RATE_LIMITED = 15
    PAUSED = 16
    LOG_LOST = 17
    SHED = 18
    FRAGMENTS = 19
    RING_FULL = 20
    GSO_SENT = 21
    GSO_SLOW = 22
    FILTER_RUN = 23
    FILTER_FAIL = 24
    NO_ENTRY = 25


MS__MAX = len(MirrorStat)
RATE_BURST_NS = 100_000_000
GROUP_BUCKETS = 256
EVENTS_BYTES = 256 * 1024
COPY_BYTES_MAX = 9216 + MIRROR_HDR_MAX
COPIES_BYTES = 4 * 1024 * 1024
COPY_HDR_LEN = 8


class MirrorEvent(enum.IntEnum):
    """`enum mirror_event`: what a kernel log record reports."""

    CLONE_FAIL = 1
    UNRESOLVED = 2
    OVERSIZE = 3
    ENCAP_FAIL = 4
    RATE_LIMITED = 5
    VLAN_DEPTH = 6
    SHED = 7
    FRAG_FAIL = 8


class MirrorPriority(enum.IntEnum):
    """`enum mirror_priority`: how far a session may drain the node's copy budget."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


PRIO_RESERVE_HIGH, PRIO_RESERVE_NORMAL, PRIO_RESERVE_LOW = 0, 20, 50
BUDGET_KEY = RULE_SLOTS * MAX_SESSIONS
# config `links:` (mirror_abi.h): listed links, and their buckets' burst
MAX_LINKS = 64
LINK_BURST_NS = 5_000_000


class MirrorLevel(enum.IntEnum):
    """`enum mirror_level`."""

    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3


class MirrorLog(ctypes.Structure):
    """Mirror of `struct mirror_log`: one kernel log record."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("code", ctypes.c_uint32),
        ("level", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("rule", ctypes.c_uint32),
        ("session", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("arg", ctypes.c_uint64 * 2),
    ]
MIRROR_RF_GROUP = 0x01
MIRROR_RF_FILTER = 0x02
# rule filters (mirror_abi.h): per rule set, and the `filter_progs` layout
MAX_FILTER_RULES = 64
FILTER_PROGS = 8
FILTER_RESUME = 4


def filter_prog(slot: int, direction: int) -> int:
    """FILTER_PROG(slot, dir): where the generated filter program of a slot and direction sits."""
    return slot * 2 + direction - 1

_be32x4 = ctypes.c_uint32 * 4  # network byte order words, built with bytes


class MirrorConfig(ctypes.Structure):
    """Mirror of `struct mirror_config`."""

    _fields_ = [
        ("active_slot", ctypes.c_uint32),
        ("rule_count", ctypes.c_uint32 * 2),
        ("encap_ifindex", ctypes.c_uint32),
        ("class_capacity", ctypes.c_uint32),
        ("paused", ctypes.c_uint32),
        ("budget_pps", ctypes.c_uint32),
        ("ring_copies", ctypes.c_uint32),
        ("budget_bps", ctypes.c_uint64),
    ]


class AddrKey(ctypes.Structure):
    """Mirror of `struct addr_key` (the `addr_classes` LPM trie key)."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("slot", ctypes.c_uint8),
        ("dim", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
    ]


class IfaceKey(ctypes.Structure):
    """Mirror of `struct iface_key` (the `iface_classes` key)."""

    _fields_ = [("slot", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class ClassRef(ctypes.Structure):
    """Mirror of `struct class_ref` (`meta_classes`, `port_classes`): a class id and its coarse mask."""

    _fields_ = [("id", ctypes.c_uint32), ("coarse", ctypes.c_uint32)]


class RuleBits(ctypes.Structure):
    """Mirror of `struct rule_bits`: a set of rule positions as a bitmap."""

    _fields_ = [("summary", ctypes.c_uint64 * SUMMARY_WORDS), ("words", ctypes.c_uint64 * RULE_WORDS)]


class MirrorRule(ctypes.Structure):
    """Mirror of `struct mirror_rule`: what the first match does."""

    _fields_ = [
        ("sessions", ctypes.c_uint64),
        ("snap_sessions", ctypes.c_uint64),
        ("gso_sessions", ctypes.c_uint64),
        ("number", ctypes.c_uint32),
        ("stats_id", ctypes.c_uint16),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class MirrorSession(ctypes.Structure):
    """Mirror of `struct mirror_session`. Address fields hold network-order bytes."""

    _fields_ = [
        ("outer_src", _be32x4),
        ("outer_dst", _be32x4),
        ("src_mac", ctypes.c_uint8 * 6),
        ("dst_mac", ctypes.c_uint8 * 6),
        ("ifindex", ctypes.c_uint32),
        ("tun_id", ctypes.c_uint32),
        ("mtu", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
        ("hdr_len", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("tunnel", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("group_size", ctypes.c_uint8),
        ("stats_id", ctypes.c_uint16),
        ("sample", ctypes.c_uint32),
        ("rate_pps", ctypes.c_uint32),
        ("rate_bps", ctypes.c_uint64),
        ("snaplen", ctypes.c_uint16),
        ("priority", ctypes.c_uint8),
        ("_pad2", ctypes.c_uint8),
        ("_pad3", ctypes.c_uint32),
    ]


class SessionSeq(ctypes.Structure):
    """Mirror of `struct session_seq`; `lock` is the kernel's `struct bpf_spin_lock` (4 bytes)."""

    _fields_ = [("lock", ctypes.c_uint32), ("seq", ctypes.c_uint32)]


class SessionLimit(ctypes.Structure):
    """Mirror of `struct session_limit`; `lock` is the kernel's `struct bpf_spin_lock` (4 bytes)."""

    _fields_ = [
        ("lock", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("pkt_tokens", ctypes.c_uint64),
        ("bit_tokens", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
    ]


class LinkRate(ctypes.Structure):
    """Mirror of `struct link_rate`."""

    _fields_ = [("bps", ctypes.c_uint64)]


class LinkState(ctypes.Structure):
    """Mirror of `struct link_state`; `lock` is the kernel's `struct bpf_spin_lock` (4 bytes)."""

    _fields_ = [
        ("lock", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("bit_tokens", ctypes.c_int64),
        ("last_ns", ctypes.c_uint64),
        ("orig_bytes", ctypes.c_uint64),
        ("copies", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("shed", ctypes.c_uint64),
    ]


class MirrorClock(ctypes.Structure):
    """Mirror of `struct mirror_clock`."""

    _fields_ = [("realtime_offset_ns", ctypes.c_uint64)]


class RuleStats(ctypes.Structure):
    """Mirror of `struct rule_stats` (one CPU's slot)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class MirrorCopy(ctypes.Structure):
    """Mirror of `struct mirror_copy`: a finished copy in `copies`; only COPY_HDR_LEN + len bytes are written."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("bytes", ctypes.c_uint8 * COPY_BYTES_MAX),
    ]


class SessionStats(ctypes.Structure):
    """Mirror of `struct session_stats` (one CPU's slot)."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("unresolved", ctypes.c_uint64),
        ("oversize", ctypes.c_uint64),
        ("encap_fail", ctypes.c_uint64),
        ("sampled_out", ctypes.c_uint64),
        ("rate_limited", ctypes.c_uint64),
        ("truncated", ctypes.c_uint64),
        ("shed", ctypes.c_uint64),
        ("fragments", ctypes.c_uint64),
        ("ring_full", ctypes.c_uint64),
        ("gso", ctypes.c_uint64),
    ]


# the session_stats fields that count copies not sent, one per reason
SESSION_NOT_SENT = tuple(f[0] for f in SessionStats._fields_
                         if f[0] not in ("packets", "bytes", "truncated", "fragments", "gso"))


def set_addr(field: ctypes.Array[ctypes.c_uint32], packed: bytes) -> None:
    """Write 4 or 16 network-order address bytes into a `__be32[4]` field."""
    ctypes.memmove(field, packed.ljust(16, b"\0"), 16)


def get_addr(field: ctypes.Array[ctypes.c_uint32], family: int) -> bytes:
    """Read the network-order address bytes of `family` from a `__be32[4]` field."""
    return bytes(field)[: 4 if family == 4 else 16]


def object_path() -> Path:
    """Where the compiled default object is: package data, else the build tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / OBJECT_NAME, here.parents[1] / "build" / "bpf" / OBJECT_NAME):
        if candidate.exists():
            return candidate
    return here / "data" / OBJECT_NAME
