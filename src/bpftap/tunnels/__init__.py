"""Tunnel codecs: the one Python definition of each tunnel header bpftap sends.

One module per type (`vxlan`, `geneve`, `gre`, `erspan` for types II and
III), each with an encoder that writes exactly what bpf/tunnels.bpf.h writes
and a decoder for the collector; `outer` builds whole copies (the tests
compare them with the kernel's) and `raw` unwraps what raw IP sockets read.

Decoders return ``(Meta, inner frame)`` and raise only DecapError, whose
``reason`` is one of their module's REASONS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bpftap.tunnels import erspan, geneve, gre, raw, vxlan
from bpftap.tunnels.common import DecapError, Meta


@dataclass(frozen=True)
class TunnelType:
    """One tunnel type bpftap sends: the one place that says what it is (config, agent, collector derive from it).

    Its kernel code is `abi.MirrorTunnel[name.upper()]` (enum mirror_tunnel);
    tests/unit/test_tunnel_codecs.py checks the two lists agree.
    """

    name: str  # as the config and the collector's --tunnel spell it
    id_field: str  # the session field that identifies its copies (gre's key is optional)
    decode: Callable[[bytes], tuple[Meta, bytes]]
    udp_port: int = 0  # its default UDP destination port; 0: carried over GRE (IP protocol 47)
    gre_proto: int = 0  # its GRE protocol type, for those over GRE
    gso: bool = False  # a super-packet's copy can be encapsulated whole (no per-packet sequence number)


#: Every tunnel type, in the order the config and --help list them.
TYPES: Final = {t.name: t for t in (
    TunnelType("vxlan", "vni", vxlan.decode, udp_port=vxlan.VXLAN_PORT, gso=True),
    TunnelType("geneve", "vni", geneve.decode, udp_port=geneve.GENEVE_PORT, gso=True),
    TunnelType("gre", "key", gre.decode, gre_proto=gre.PROTO_TEB, gso=True),
    TunnelType("erspan2", "session_id", erspan.decode2, gre_proto=erspan.PROTO_TYPE2),
    TunnelType("erspan3", "session_id", erspan.decode3, gre_proto=erspan.PROTO_TYPE3),
)}
TUNNELS: Final = tuple(TYPES)
UDP_TUNNELS: Final = tuple(t.name for t in TYPES.values() if t.udp_port)
GRE_TUNNELS: Final = tuple(t.name for t in TYPES.values() if t.gre_proto)
#: Those carried over GRE (a raw socket for IP protocol 47), by GRE protocol type.
GRE_PROTOCOLS: Final = {t.gre_proto: t.name for t in TYPES.values() if t.gre_proto}
UDP_PORTS: Final = {t.name: t.udp_port for t in TYPES.values() if t.udp_port}
#: The field that identifies a session's copies, per tunnel type.
TUNNEL_ID_FIELDS: Final = {t.name: t.id_field for t in TYPES.values()}
DECODERS: Final[dict[str, Callable[[bytes], tuple[Meta, bytes]]]] = {t.name: t.decode for t in TYPES.values()}


def decode_gre(packet: bytes) -> tuple[Meta, bytes]:
    """Decode any GRE packet bpftap sends (gre, erspan2, erspan3), chosen by its protocol type.

    Raises DecapError: GRE header reasons (tunnel "gre"), "protocol" for a
    protocol type none of them uses, or the chosen decoder's reasons.
    """
    if len(packet) < 4:
        raise DecapError("gre", "short", f"{len(packet)} bytes, GRE needs 4")
    proto = int.from_bytes(packet[2:4], "big")
    tunnel = GRE_PROTOCOLS.get(proto)
    if tunnel is None:
        raise DecapError("gre", "protocol", f"GRE protocol type 0x{proto:04x} is not Ethernet or ERSPAN")
    return DECODERS[tunnel](packet)


__all__ = ["DECODERS", "GRE_PROTOCOLS", "GRE_TUNNELS", "TUNNELS", "TUNNEL_ID_FIELDS", "TYPES", "UDP_PORTS",
           "UDP_TUNNELS", "DecapError", "Meta", "TunnelType", "decode_gre", "erspan", "geneve", "gre", "raw", "vxlan"]
