"""What every tunnel codec shares: the decoded metadata, the one error type, small helpers.

A decoder takes the bytes a socket hands over (a UDP payload, or a GRE
packet from its first GRE byte) and returns ``(Meta, inner frame)``, or
raises DecapError; it raises nothing else, whatever the input (the fuzz
tests in tests/unit/test_tunnel_decode_fuzz.py hold them to that).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from bpftap import abi
from bpftap.errors import BpftapError

# the packet constants every tunnel module and the collector's underlay share (one home each)
ETH_HLEN: Final = 14
VLAN_TPIDS: Final = (0x8100, 0x88A8)
UDP_HLEN: Final = 8
IPPROTO_UDP: Final = 17
IPPROTO_GRE: Final = 47
PROTO_TEB: Final = 0x6558  # Transparent Ethernet Bridging: an Ethernet frame follows (GRE, GENEVE)
VNI_MAX: Final = (1 << 24) - 1  # VXLAN's and GENEVE's 24-bit network identifier
DIRECTIONS: Final = {int(abi.MirrorDir.INGRESS): "ingress", int(abi.MirrorDir.EGRESS): "egress"}

_WORD = struct.Struct("!I")


class DecapError(BpftapError):
    """Bytes that are not a frame of `tunnel` we accept; `reason` is one of that codec's REASONS."""

    def __init__(self, tunnel: str, reason: str, detail: str = "") -> None:
        self.tunnel, self.reason, self.detail = tunnel, reason, detail
        super().__init__(f"{tunnel} decap: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Header:
    """What one copy's tunnel header carries, for an encoder (`TunnelType.encode`, `.header_len`).

    `tun_id` is the VNI, GRE key or ERSPAN session id; `key` and `seq_on`
    say whether a GRE header carries the key and a sequence number,
    `platform` whether an ERSPAN III header has the platform sub-header;
    `seq`, `direction`, `ifindex`, `timestamp_ns` describe the packet.
    A type reads only the fields it has.
    """

    tun_id: int = 0
    key: bool = False
    seq_on: bool = False
    platform: bool = True
    seq: int = 0
    direction: int = 0
    ifindex: int = 0
    timestamp_ns: int = 0


@dataclass(frozen=True)
class Meta:
    """What a tunnel header said about its inner frame; None where the type carries no such field.

    `id` is the VNI (VXLAN, GENEVE), the GRE key or the ERSPAN session id.
    `direction` is 1 (ingress) or 2 (egress) as in `abi.MirrorDir`;
    `ifindex` the source interface as far as the header holds it (ERSPAN
    truncates it to 20 or 14 bits); `timestamp_ns` the packet's time in
    ns since the Unix epoch (ERSPAN III with IEEE 1588 granularity);
    `group` the group policy id of VXLAN's GBP extension.
    """

    tunnel: str
    id: int | None = None
    seq: int | None = None
    direction: int | None = None
    ifindex: int | None = None
    timestamp_ns: int | None = None
    vlan: int | None = None
    group: int | None = None  # VXLAN GBP's group policy id

    @property
    def id_name(self) -> str:
        """What `id` is called for this tunnel type: vni, key or session."""
        return {"vxlan": "vni", "geneve": "vni", "gre": "key"}.get(self.tunnel, "session")

    def describe(self) -> str:
        """`tunnel=gre key=7 seq=12 dir=egress if=3`: the fields present, as a pcapng comment starts."""
        parts = [f"tunnel={self.tunnel}"]
        if self.id is not None:
            parts.append(f"{self.id_name}={self.id}")
        for name, value in (("seq", self.seq), ("dir", DIRECTIONS.get(self.direction or 0)),
                            ("if", self.ifindex), ("vlan", self.vlan), ("gbp", self.group)):
            if value is not None:
                parts.append(f"{name}={value}")
        if self.timestamp_ns is not None:
            parts.append(f"ts={self.timestamp_ns // 1_000_000_000}.{self.timestamp_ns % 1_000_000_000:09d}")
        return " ".join(parts)


def word(data: bytes, offset: int) -> int:
    """The big-endian 32-bit word at `offset` (the caller checked the length)."""
    return int(_WORD.unpack_from(data, offset)[0])


def inner_frame(tunnel: str, data: bytes, offset: int) -> bytes:
    """The inner Ethernet frame from `offset`; DecapError "short" if it is shorter than an Ethernet header."""
    inner = bytes(data[offset:])
    if len(inner) < ETH_HLEN:
        raise DecapError(tunnel, "short", f"inner frame {len(inner)} bytes, Ethernet needs {ETH_HLEN}")
    return inner


def outer_vlan(inner: bytes) -> int | None:
    """The TCI of the inner frame's outermost 802.1Q/802.1ad tag, None if untagged."""
    if len(inner) >= ETH_HLEN + 4 and int.from_bytes(inner[12:14], "big") in VLAN_TPIDS:
        return int.from_bytes(inner[14:16], "big")
    return None
