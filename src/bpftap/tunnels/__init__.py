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
from typing import Final

from bpftap.tunnels import erspan, geneve, gre, raw, vxlan
from bpftap.tunnels.common import DecapError, Meta

#: Tunnel types as the config and the collector's --tunnel spell them.
TUNNELS: Final = ("vxlan", "geneve", "gre", "erspan2", "erspan3")
#: Those carried over GRE (a raw socket for IP protocol 47), by GRE protocol type.
GRE_PROTOCOLS: Final = {gre.PROTO_TEB: "gre", erspan.PROTO_TYPE2: "erspan2", erspan.PROTO_TYPE3: "erspan3"}
UDP_PORTS: Final = {"vxlan": vxlan.VXLAN_PORT, "geneve": geneve.GENEVE_PORT}

DECODERS: Final[dict[str, Callable[[bytes], tuple[Meta, bytes]]]] = {
    "vxlan": vxlan.decode,
    "geneve": geneve.decode,
    "gre": gre.decode,
    "erspan2": erspan.decode2,
    "erspan3": erspan.decode3,
}


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


__all__ = ["DECODERS", "GRE_PROTOCOLS", "TUNNELS", "UDP_PORTS", "DecapError", "Meta", "decode_gre", "erspan",
           "geneve", "gre", "raw", "vxlan"]
