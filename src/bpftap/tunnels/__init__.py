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
from typing import Final, NoReturn

from bpftap import abi
from bpftap.tunnels import erspan, geneve, gre, raw, vxlan
from bpftap.tunnels.common import DecapError, Header, Meta


@dataclass(frozen=True)
class TunnelType:
    """One tunnel type bpftap sends: the one place that says what it is.

    Config validation, the outer-header builder (`outer`), the collector and
    the ABI test all read TYPES, directly or through the views below, so a
    type registered there is seen by all of them (tests/unit/test_tunnel_registry.py
    adds a fake one). Its kernel code is `abi.MirrorTunnel[name.upper()]`
    (enum mirror_tunnel in bpf/mirror_abi.h); tests/unit/test_tunnel_codecs.py
    checks that the two lists agree.
    """

    name: str  # as the config and the collector's --tunnel spell it
    id_field: str  # the session field that identifies its copies (gre's key is optional)
    decode: Callable[[bytes], tuple[Meta, bytes]]
    encode: Callable[[Header, bytes], bytes]  # the tunnel header and the inner frame (after UDP, or the GRE packet)
    header_len: Callable[[Header], int]  # the length of what encode puts before the inner frame
    udp_port: int = 0  # its default UDP destination port; 0: carried over GRE (IP protocol 47)
    gre_proto: int = 0  # its GRE protocol type, for those over GRE
    gso: bool = False  # a super-packet's copy can be encapsulated whole (no per-packet sequence number)
    id_optional: bool = False  # a session may leave id_field out (gre without a key)
    options: tuple[str, ...] = ()  # session fields only this type takes (`port`: every UDP type)

    @property
    def kernel_code(self) -> abi.MirrorTunnel:
        """Its value in enum mirror_tunnel. Raises KeyError for a type the kernel object does not know."""
        return abi.MirrorTunnel[self.name.upper()]


class _Registry(dict[str, TunnelType]):
    """TYPES: a dict that re-derives the views below in place after each change, so a type added here shows
    up wherever a view was imported (`from bpftap.tunnels import TUNNELS` included)."""

    def __setitem__(self, name: str, tunnel: TunnelType) -> None:
        super().__setitem__(name, tunnel)
        _derive()

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        _derive()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("add or remove tunnel types one at a time (TYPES[name] = t, del TYPES[name])")

    pop = popitem = clear = update = setdefault = __ior__ = _read_only


#: Every tunnel type, in the order the config and --help list them.
TYPES: Final = _Registry({t.name: t for t in (
    TunnelType("vxlan", "vni", vxlan.decode, lambda h, inner: vxlan.encode(h.tun_id, inner),
               lambda h: vxlan.HEADER_LEN, udp_port=vxlan.VXLAN_PORT, gso=True),
    TunnelType("geneve", "vni", geneve.decode,
               lambda h, inner: geneve.encode(h.tun_id, inner, direction=h.direction, ifindex=h.ifindex, seq=h.seq),
               lambda h: geneve.HEADER_LEN, udp_port=geneve.GENEVE_PORT, gso=True),
    TunnelType("gre", "key", gre.decode,
               lambda h, inner: gre.encode(inner, key=h.tun_id if h.key else None, seq=h.seq if h.seq_on else None),
               lambda h: 4 + 4 * h.key + 4 * h.seq_on, gre_proto=gre.PROTO_TEB, gso=True,
               id_optional=True, options=("sequence",)),
    TunnelType("erspan2", "session_id", erspan.decode2,
               lambda h, inner: erspan.encode2(h.tun_id, inner, seq=h.seq, ifindex=h.ifindex),
               lambda h: 8 + 8, gre_proto=erspan.PROTO_TYPE2),
    TunnelType("erspan3", "session_id", erspan.decode3,
               lambda h, inner: erspan.encode3(h.tun_id, inner, seq=h.seq, direction=h.direction, ifindex=h.ifindex,
                                               timestamp_ns=h.timestamp_ns, platform=h.platform),
               lambda h: 8 + 12 + 8 * h.platform, gre_proto=erspan.PROTO_TYPE3,
               options=("platform_subheader",)),
)})


# Views of TYPES, kept in step with it by _derive() (names in TYPES' order).
TUNNELS: Final[list[str]] = []
UDP_TUNNELS: Final[list[str]] = []
GRE_TUNNELS: Final[list[str]] = []
#: Those carried over GRE (a raw socket for IP protocol 47), by GRE protocol type.
GRE_PROTOCOLS: Final[dict[int, str]] = {}
UDP_PORTS: Final[dict[str, int]] = {}
#: The field that identifies a session's copies, per tunnel type.
TUNNEL_ID_FIELDS: Final[dict[str, str]] = {}
DECODERS: Final[dict[str, Callable[[bytes], tuple[Meta, bytes]]]] = {}


def _derive() -> None:
    types = list(TYPES.values())
    TUNNELS[:] = [t.name for t in types]
    UDP_TUNNELS[:] = [t.name for t in types if t.udp_port]
    GRE_TUNNELS[:] = [t.name for t in types if t.gre_proto]
    GRE_PROTOCOLS.clear()
    GRE_PROTOCOLS.update({t.gre_proto: t.name for t in types if t.gre_proto})
    UDP_PORTS.clear()
    UDP_PORTS.update({t.name: t.udp_port for t in types if t.udp_port})
    TUNNEL_ID_FIELDS.clear()
    TUNNEL_ID_FIELDS.update({t.name: t.id_field for t in types})
    DECODERS.clear()
    DECODERS.update({t.name: t.decode for t in types})


_derive()


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
