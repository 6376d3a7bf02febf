"""GENEVE (RFC 8926) with bpftap's option: the header after the UDP header.

Layout (network order)::

    Ver(2)=0 | Opt Len(6) | O | C | Rsvd(6) | Protocol Type(16) = 0x6558 (TEB)
    VNI(24) | Reserved(8)
    options: Class(16) | Type(8) | R(3) | Length(5) | Length * 4 bytes of data

bpftap sends one option: class GENEVE_OPT_CLASS_BPFTAP (0xFFFB, from the
experimental range 0xFFF0-0xFFFF), type GENEVE_OPT_TYPE_SOURCE (0x01, the
critical bit 0x80 clear so any receiver may ignore it), length 3 words::

    version(8)=1 | direction(8) (1 ingress, 2 egress, 0 unknown) | reserved(16)
    source ifindex(32) (0 unknown)
    sequence number(32) (per session, from 1)

``decode`` accepts any options and reads ours; like RFC 8926 section 3.5
requires, a frame with a critical option we do not understand is dropped.
OAM frames (O bit) carry no mirrored traffic and are dropped too. Reserved
bits are ignored on receipt, as the RFC says.
"""

from __future__ import annotations

import struct
from typing import Final

from bpftap import abi
from bpftap.tunnels.common import PROTO_TEB, VNI_MAX, DecapError, Meta, inner_frame, word

GENEVE_PORT: Final = 6081
BASE_LEN: Final = 8
OPTION_LEN: Final = 16  # option header 4 + data 12
HEADER_LEN: Final = BASE_LEN + OPTION_LEN
TYPE_CRITICAL: Final = 0x80

#: Every reason a DecapError from ``decode`` can carry.
REASONS: Final = ("short", "version", "oam", "protocol", "options", "critical")

_OPTION = struct.Struct("!HBBBBHII")


def option(direction: int = 0, ifindex: int = 0, seq: int = 0) -> bytes:
    """bpftap's option TLV (16 bytes). Raises struct.error for values that do not fit their fields."""
    return _OPTION.pack(abi.GENEVE_OPT_CLASS_BPFTAP, abi.GENEVE_OPT_TYPE_SOURCE, 3,
                        abi.GENEVE_OPT_VERSION, direction, 0, ifindex, seq)


def encode(vni: int, inner: bytes, *, direction: int = 0, ifindex: int = 0, seq: int = 0) -> bytes:
    """GENEVE header with bpftap's option, then `inner`. Raises ValueError if `vni` is outside 0..2**24-1."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"vni {vni} out of range 0..{VNI_MAX}")
    base = struct.pack("!BBHI", (OPTION_LEN // 4), 0, PROTO_TEB, vni << 8)
    return base + option(direction, ifindex, seq) + bytes(inner)


def decode(payload: bytes) -> tuple[Meta, bytes]:
    """Split a GENEVE UDP payload into metadata (VNI, and from bpftap's option the
    direction, source ifindex and sequence number) and the inner Ethernet frame.

    Raises DecapError with `reason`:
      - "short": no 8-byte header, options longer than the payload, or an
        inner frame shorter than an Ethernet header;
      - "version": version is not 0;
      - "oam": the O bit is set (a control message, not a mirrored frame);
      - "protocol": the protocol type is not Transparent Ethernet Bridging;
      - "options": an option overruns the option area;
      - "critical": an option we do not know has the critical bit set.
    Never raises anything else.
    """
    if len(payload) < BASE_LEN:
        raise DecapError("geneve", "short", f"{len(payload)} bytes, header needs {BASE_LEN}")
    first, flags, proto = payload[0], payload[1], int.from_bytes(payload[2:4], "big")
    if first >> 6:
        raise DecapError("geneve", "version", f"version {first >> 6}")
    if flags & 0x80:
        raise DecapError("geneve", "oam", "O bit set")
    if proto != PROTO_TEB:
        raise DecapError("geneve", "protocol", f"protocol type 0x{proto:04x}, not 0x{PROTO_TEB:04x}")
    end = BASE_LEN + (first & 0x3F) * 4
    if end > len(payload):
        raise DecapError("geneve", "short", f"{end - BASE_LEN} bytes of options in {len(payload)} bytes")
    meta = Meta("geneve", id=word(payload, 4) >> 8)
    pos = BASE_LEN
    while pos < end:
        if pos + 4 > end:
            raise DecapError("geneve", "options", f"option header at {pos} overruns the options")
        cls, typ, length = int.from_bytes(payload[pos:pos + 2], "big"), payload[pos + 2], payload[pos + 3] & 0x1F
        data_end = pos + 4 + length * 4
        if data_end > end:
            raise DecapError("geneve", "options", f"option 0x{cls:04x}/{typ} of {length * 4} bytes overruns")
        ours = cls == abi.GENEVE_OPT_CLASS_BPFTAP and typ == abi.GENEVE_OPT_TYPE_SOURCE
        if ours and length == 3 and payload[pos + 4] == abi.GENEVE_OPT_VERSION:
            direction = payload[pos + 5]
            meta = Meta("geneve", id=meta.id, seq=word(payload, pos + 12),
                        direction=direction or None, ifindex=word(payload, pos + 8) or None)
        elif not ours and typ & TYPE_CRITICAL:
            raise DecapError("geneve", "critical", f"unknown critical option 0x{cls:04x}/0x{typ:02x}")
        pos = data_end
    return meta, inner_frame("geneve", payload, end)
