"""ERSPAN types II and III (draft-foschiano-erspan-03) inside GRE, as bpftap sends them.

Type II: GRE with S (sequence number), protocol 0x88BE, then 8 bytes::

    Ver(4)=1 | VLAN(12) | COS(3) | En(2) | T(1) | Session ID(10)
    Reserved(12) | Index(20)

Type III: GRE with S, protocol 0x22EB, then 12 bytes and (unless the
session says `platform_subheader: false`) bpftap's 8-byte platform-specific
sub-header (O = 1, platform ID 3)::

    Ver(4)=2 | VLAN(12) | COS(3) | BSO(2) | T(1) | Session ID(10)
    Timestamp(32)
    SGT(16) | P(1) | FT(5) | Hw ID(6) | D(1) | Gra(2) | O(1)
    Platf ID(6)=3 | Reserved(12) | Port ID/Index(14)
    Upper timestamp(32)

bpftap's choices: VLAN and COS are the inner frame's outermost tag (its VID
and PCP), 0 when untagged; En is 3 ("tag preserved in the frame") for a
tagged frame, else 0; T and BSO are 0. Index (type II) and Port ID (type
III) hold the source ifindex, cut to 20 and 14 bits. Type II has no
direction field; type III sets D for egress. Type III's time uses IEEE 1588
granularity (Gra 2): the packet's CLOCK_REALTIME (UTC) nanoseconds within
the second in Timestamp and its seconds since the epoch in the sub-header's
upper timestamp word (not TAI: Linux's own ERSPAN uses the realtime clock
too). P is 1 (an Ethernet PDU) and FT 0 (Ethernet), as Linux sends them.
Linux's own erspan/ip6erspan receivers ignore the O bit and strip a fixed
12-byte header, so they need copies without the sub-header (then the
timestamp holds only the nanoseconds within the second, and no port).
"""

from __future__ import annotations

import struct
from typing import Final

from bpftap import abi
from bpftap.tunnels import gre
from bpftap.tunnels.common import DecapError, Meta, inner_frame, outer_vlan, word

PROTO_TYPE2: Final = 0x88BE
PROTO_TYPE3: Final = 0x22EB
SESSION_MAX: Final = 0x3FF
EN_IN_FRAME: Final = 3
NS: Final = 1_000_000_000

#: Every reason a DecapError from ``decode2``/``decode3`` can carry (GRE's as well).
REASONS: Final = (*gre.REASONS, "type1", "version", "frame_type")


def _word0(version: int, inner: bytes, session_id: int, en: int) -> int:
    if not 0 <= session_id <= SESSION_MAX:
        raise ValueError(f"session id {session_id} out of range 0..{SESSION_MAX}")
    tci = outer_vlan(inner)
    vlan, cos = (tci & 0xFFF, tci >> 13) if tci is not None else (0, 0)
    return version << 28 | vlan << 16 | cos << 13 | en << 11 | session_id


def encode2(session_id: int, inner: bytes, *, seq: int, ifindex: int = 0) -> bytes:
    """GRE + ERSPAN type II around `inner`. Raises ValueError for a session id outside 0..1023."""
    en = EN_IN_FRAME if outer_vlan(inner) is not None else 0
    body = struct.pack("!II", _word0(1, inner, session_id, en), ifindex & 0xFFFFF)
    return gre.header(PROTO_TYPE2, seq=seq) + body + bytes(inner)


def encode3(session_id: int, inner: bytes, *, seq: int, direction: int = 0, ifindex: int = 0,
            timestamp_ns: int = 0, platform: bool = True) -> bytes:
    """GRE + ERSPAN type III around `inner`, with bpftap's platform sub-header unless `platform` is False.

    Raises ValueError for a session id outside 0..1023.
    """
    word2 = 1 << 15 | (1 << 3 if direction == abi.MirrorDir.EGRESS else 0) | abi.ERSPAN3_GRA_1588 << 1 | platform
    secs, nsecs = divmod(timestamp_ns, NS)
    body = struct.pack("!III", _word0(2, inner, session_id, 0), nsecs, word2)
    if platform:
        body += struct.pack("!II", abi.ERSPAN3_PLATFORM_ID << 26 | (ifindex & 0x3FFF), secs & 0xFFFFFFFF)
    return gre.header(PROTO_TYPE3, seq=seq) + body + bytes(inner)


def decode2(packet: bytes) -> tuple[Meta, bytes]:
    """Split a GRE packet with ERSPAN type II into metadata and the inner frame.

    Raises DecapError: GRE's reasons (see gre.parse), "protocol" if it is
    not 0x88BE, "type1" without a GRE sequence number (type I has no
    ERSPAN header; not accepted), "short" for a cut header or a short
    inner frame, "version" if the ERSPAN version is not 1. Nothing else.
    """
    proto, _key, seq, pos = gre.parse(packet, "erspan2")
    if proto != PROTO_TYPE2:
        raise DecapError("erspan2", "protocol", f"protocol type 0x{proto:04x}, not 0x{PROTO_TYPE2:04x}")
    if seq is None:
        raise DecapError("erspan2", "type1", "no sequence number: ERSPAN type I")
    if len(packet) < pos + 8:
        raise DecapError("erspan2", "short", "ERSPAN II header cut off")
    w0, w1 = word(packet, pos), word(packet, pos + 4)
    if w0 >> 28 != 1:
        raise DecapError("erspan2", "version", f"ERSPAN version {w0 >> 28}, type II is 1")
    vlan = (w0 >> 16) & 0xFFF if (w0 >> 11) & 3 == EN_IN_FRAME else None
    meta = Meta("erspan2", id=w0 & SESSION_MAX, seq=seq, ifindex=(w1 & 0xFFFFF) or None, vlan=vlan)
    return meta, inner_frame("erspan2", packet, pos + 8)


def decode3(packet: bytes) -> tuple[Meta, bytes]:
    """Split a GRE packet with ERSPAN type III into metadata and the inner frame.

    The timestamp is returned only when it is complete: IEEE 1588
    granularity with a platform ID 3 sub-header. Raises DecapError: GRE's
    reasons, "protocol" if it is not 0x22EB, "short", "version" (not 2),
    "frame_type" (not Ethernet). Nothing else.
    """
    proto, _key, seq, pos = gre.parse(packet, "erspan3")
    if proto != PROTO_TYPE3:
        raise DecapError("erspan3", "protocol", f"protocol type 0x{proto:04x}, not 0x{PROTO_TYPE3:04x}")
    if len(packet) < pos + 12:
        raise DecapError("erspan3", "short", "ERSPAN III header cut off")
    w0, low, w2 = word(packet, pos), word(packet, pos + 4), word(packet, pos + 8)
    if w0 >> 28 != 2:
        raise DecapError("erspan3", "version", f"ERSPAN version {w0 >> 28}, type III is 2")
    if (w2 >> 10) & 0x1F:
        raise DecapError("erspan3", "frame_type", f"frame type {(w2 >> 10) & 0x1F}, not Ethernet (0)")
    end, ifindex, stamp = pos + 12, None, None
    if w2 & 1:
        if len(packet) < end + 8:
            raise DecapError("erspan3", "short", "platform sub-header cut off")
        sub, upper = word(packet, end), word(packet, end + 4)
        if sub >> 26 == abi.ERSPAN3_PLATFORM_ID:
            ifindex = (sub & 0x3FFF) or None
            if (w2 >> 1) & 3 == abi.ERSPAN3_GRA_1588:
                stamp = upper * NS + low
        end += 8
    direction = int(abi.MirrorDir.EGRESS if w2 & 0x8 else abi.MirrorDir.INGRESS)
    meta = Meta("erspan3", id=w0 & SESSION_MAX, seq=seq, direction=direction, ifindex=ifindex,
                timestamp_ns=stamp, vlan=(w0 >> 16) & 0xFFF or None)
    return meta, inner_frame("erspan3", packet, end)
