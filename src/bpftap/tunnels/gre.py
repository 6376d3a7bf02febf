"""GRE (RFC 2784, key and sequence number from RFC 2890) carrying Ethernet (0x6558).

Layout (network order)::

    C | R | K | S | s | Recur(3) | Flags(5) | Ver(3) = 0 | Protocol Type(16)
    [Checksum(16) | Reserved1(16)]   if C
    [Key(32)]                        if K
    [Sequence Number(32)]            if S

``parse`` reads the header of any GRE packet (ERSPAN's too); bpftap sends
no checksum but ``parse`` verifies one when present. ``decode`` accepts
only Transparent Ethernet Bridging. Deprecated RFC 1701 bits (R, s,
recursion, flags) and versions other than 0 are refused.
"""

from __future__ import annotations

import struct
from typing import Final

from bpftap.tunnels.common import PROTO_TEB, DecapError, Meta, inner_frame, word

F_CSUM: Final = 0x8000
F_KEY: Final = 0x2000
F_SEQ: Final = 0x1000

#: Every reason a DecapError from ``parse``/``decode`` can carry.
REASONS: Final = ("short", "version", "flags", "checksum", "protocol")


def header(proto: int, *, key: int | None = None, seq: int | None = None) -> bytes:
    """A GRE header for `proto` with an optional key and sequence number (no checksum)."""
    flags = (F_KEY if key is not None else 0) | (F_SEQ if seq is not None else 0)
    out = struct.pack("!HH", flags, proto)
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: 0 when data holds a right checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(packet: bytes, tunnel: str = "gre") -> tuple[int, int | None, int | None, int]:
    """Read a GRE header: (protocol type, key or None, sequence number or None, header length).

    Raises DecapError (named `tunnel`) with `reason` "short" (header cut
    off), "version" (not 0), "flags" (R, s, recursion or flag bits set) or
    "checksum" (C set and the checksum is wrong). Never raises anything else.
    """
    if len(packet) < 4:
        raise DecapError(tunnel, "short", f"{len(packet)} bytes, GRE needs 4")
    bits, proto = int.from_bytes(packet[0:2], "big"), int.from_bytes(packet[2:4], "big")
    if bits & 0x7:
        raise DecapError(tunnel, "version", f"GRE version {bits & 0x7}")
    if bits & ~(F_CSUM | F_KEY | F_SEQ) & 0xFFF8:
        raise DecapError(tunnel, "flags", f"GRE flags 0x{bits:04x}")
    need = 4 + 4 * ((bits & F_CSUM) > 0) + 4 * ((bits & F_KEY) > 0) + 4 * ((bits & F_SEQ) > 0)
    if len(packet) < need:
        raise DecapError(tunnel, "short", f"{len(packet)} bytes, GRE header needs {need}")
    pos = 4
    if bits & F_CSUM:
        if checksum(bytes(packet)):
            raise DecapError(tunnel, "checksum", "GRE checksum does not match")
        pos += 4
    key = seq = None
    if bits & F_KEY:
        key, pos = word(packet, pos), pos + 4
    if bits & F_SEQ:
        seq, pos = word(packet, pos), pos + 4
    return proto, key, seq, pos


def encode(inner: bytes, *, key: int | None = None, seq: int | None = None) -> bytes:
    """GRE (Transparent Ethernet Bridging) around `inner`."""
    return header(PROTO_TEB, key=key, seq=seq) + bytes(inner)


def decode(packet: bytes) -> tuple[Meta, bytes]:
    """Split a GRE packet carrying Ethernet into metadata (key, sequence) and the inner frame.

    Raises DecapError as `parse` does, "protocol" if the protocol type is
    not 0x6558, "short" for an inner frame shorter than 14 bytes. Never
    raises anything else.
    """
    proto, key, seq, pos = parse(packet)
    if proto != PROTO_TEB:
        raise DecapError("gre", "protocol", f"protocol type 0x{proto:04x}, not 0x{PROTO_TEB:04x}")
    return Meta("gre", id=key, seq=seq), inner_frame("gre", packet, pos)
