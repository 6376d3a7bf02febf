"""ctypes mirror of bpf/mirror_abi.h: structs, enums, limits and names.

tests/bpf/test_abi_layout.py compares every struct here with the BTF of the
compiled object, and every constant with the header, so the two cannot drift.
"""

from __future__ import annotations

import ctypes
import enum
from pathlib import Path

MAX_RULES = 256
RULE_SLOTS = 2
MAX_SESSIONS = 64
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT = 6

MIRROR_PASS = -1
MIRROR_COPY_MARK = 0x62746170
XFER_TAG = 0xB7000000
XFER_TAG_MASK = 0xFF000000
XFER_EGRESS = 0x00010000
XFER_RULE_MASK = 0x0000FFFF

# program and map names, as in bpf/mirror_tc.bpf.c (checked by a test)
PROG_INGRESS = "mirror_ingress"
PROG_EGRESS = "mirror_egress"
PROG_ENCAP = "mirror_encap"
MAP_CONFIG = "config"
MAP_RULES = "rules"
MAP_SESSIONS = "sessions"
MAP_STATS = "stats"
MAP_RULE_STATS = "rule_stats"
MAP_SESSION_STATS = "session_stats"

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
    """`enum mirror_tunnel`."""

    VXLAN = 1


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


MS__MAX = len(MirrorStat)

_be32x4 = ctypes.c_uint32 * 4  # network byte order words, built with bytes


class MirrorConfig(ctypes.Structure):
    """Mirror of `struct mirror_config`."""

    _fields_ = [
        ("active_slot", ctypes.c_uint32),
        ("rule_count", ctypes.c_uint32 * 2),
        ("encap_ifindex", ctypes.c_uint32),
        ("v6_sessions", ctypes.c_uint64),
    ]


class MirrorRule(ctypes.Structure):
    """Mirror of `struct mirror_rule`. Address fields hold network-order bytes."""

    _fields_ = [
        ("src_net", _be32x4),
        ("src_mask", _be32x4),
        ("dst_net", _be32x4),
        ("dst_mask", _be32x4),
        ("sessions", ctypes.c_uint64),
        ("number", ctypes.c_uint32),
        ("sport_lo", ctypes.c_uint16),
        ("sport_hi", ctypes.c_uint16),
        ("dport_lo", ctypes.c_uint16),
        ("dport_hi", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("dirs", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
    ]


class MirrorSession(ctypes.Structure):
    """Mirror of `struct mirror_session`. Address fields hold network-order bytes."""

    _fields_ = [
        ("outer_src", _be32x4),
        ("outer_dst", _be32x4),
        ("src_mac", ctypes.c_uint8 * 6),
        ("dst_mac", ctypes.c_uint8 * 6),
        ("ifindex", ctypes.c_uint32),
        ("vni", ctypes.c_uint32),
        ("mtu", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("tunnel", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    ]


class RuleStats(ctypes.Structure):
    """Mirror of `struct rule_stats` (one CPU's slot)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class SessionStats(ctypes.Structure):
    """Mirror of `struct session_stats` (one CPU's slot)."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("unresolved", ctypes.c_uint64),
        ("oversize", ctypes.c_uint64),
        ("encap_fail", ctypes.c_uint64),
    ]


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
