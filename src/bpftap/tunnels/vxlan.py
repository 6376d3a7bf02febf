"""VXLAN (RFC 7348): the 8-byte header after the UDP header.

Layout (network order)::

    flags(8) = 0x08 (I: VNI valid) | reserved(24) | VNI(24) | reserved(8)

``decode`` is strict about reserved bits, like the Linux vxlan driver: a frame
with the I flag set but any other flag or reserved bit non-zero is dropped with
reason ``"reserved"`` (RFC 7348 says receivers should ignore those bits; Linux
drops them unless an extension such as GBP, GPE or RCO is configured, because a
non-zero bit means an extension this receiver does not understand, so the
"inner frame" may not be Ethernet at all).
"""

from __future__ import annotations

import struct
from typing import Final

from bpftap.tunnels.common import DecapError, Meta, inner_frame

VXLAN_PORT: Final = 4789
HEADER_LEN: Final = 8
VNI_MAX: Final = (1 << 24) - 1
FLAG_I: Final = 0x08

#: Every reason a DecapError from ``decode`` can carry, in the order they are checked.
REASONS: Final = ("short", "flags", "reserved")

_HDR = struct.Struct("!II")


def encode(vni: int, inner: bytes) -> bytes:
    """The VXLAN header carrying `vni`, then `inner`.

    Raises ValueError if `vni` is outside 0..2**24-1. `inner` is not
    checked: the encoder also builds malformed frames for tests.
    """
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"vni {vni} out of range 0..{VNI_MAX}")
    return _HDR.pack(FLAG_I << 24, vni << 8) + bytes(inner)


def decode(payload: bytes) -> tuple[Meta, bytes]:
    """Split a VXLAN UDP payload into its metadata (the VNI) and the inner Ethernet frame.

    Raises DecapError with `reason`:
      - "short": fewer than 8 header bytes, or an inner frame shorter than
        an Ethernet header (14 bytes);
      - "flags": the I flag (0x08) is not set;
      - "reserved": the I flag is set but another flag bit or a reserved
        byte is non-zero.
    Never raises anything else, whatever the input.
    """
    if len(payload) < HEADER_LEN:
        raise DecapError("vxlan", "short", f"{len(payload)} bytes, header needs {HEADER_LEN}")
    word0, word1 = _HDR.unpack_from(payload)
    if not (word0 >> 24) & FLAG_I:
        raise DecapError("vxlan", "flags", f"flags 0x{word0 >> 24:02x} lack I (0x08)")
    if word0 != FLAG_I << 24 or word1 & 0xFF:
        raise DecapError("vxlan", "reserved", f"header {bytes(payload[:HEADER_LEN]).hex()}")
    return Meta("vxlan", id=word1 >> 8), inner_frame("vxlan", payload, HEADER_LEN)
