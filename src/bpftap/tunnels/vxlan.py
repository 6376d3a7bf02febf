"""VXLAN (RFC 7348): the 8-byte header after the UDP header.

Layout (network order)::

    flags(8) = 0x08 (I: VNI valid) | reserved(24) | VNI(24) | reserved(8)

``decode`` looks at the I flag and the VNI only: RFC 7348 section 5 says
reserved bits MUST be ignored on receipt, and senders set them (Linux and
Cilium with group policy send the GBP extension, flags 0x88, a 16-bit group
id in bytes 2-3; it is reported as ``Meta.group`` and in the comment as
``gbp=N``). The Linux vxlan driver drops such frames unless configured for
the extension; a collector would only lose copies that way.
"""

from __future__ import annotations

import struct
from typing import Final

from bpftap.tunnels.common import VNI_MAX, DecapError, Meta, inner_frame

VXLAN_PORT: Final = 4789
HEADER_LEN: Final = 8
FLAG_I: Final = 0x08
FLAG_G: Final = 0x80  # GBP (draft-smith-vxlan-group-policy): a group policy id in bytes 2-3

#: Every reason a DecapError from ``decode`` can carry, in the order they are checked.
REASONS: Final = ("short", "flags")

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
      - "flags": the I flag (0x08) is not set.
    Other flag and reserved bits are ignored; with the G flag (GBP) the
    group id is in the returned Meta's `group`.
    Never raises anything else, whatever the input.
    """
    if len(payload) < HEADER_LEN:
        raise DecapError("vxlan", "short", f"{len(payload)} bytes, header needs {HEADER_LEN}")
    word0, word1 = _HDR.unpack_from(payload)
    if not (word0 >> 24) & FLAG_I:
        raise DecapError("vxlan", "flags", f"flags 0x{word0 >> 24:02x} lack I (0x08)")
    group = word0 & 0xFFFF if (word0 >> 24) & FLAG_G else None
    return Meta("vxlan", id=word1 >> 8, group=group), inner_frame("vxlan", payload, HEADER_LEN)
