"""Whole copies as the encap stage sends them: outer Ethernet, IPv4 or IPv6, UDP or GRE, tunnel.

`encapsulate` is the Python twin of build_outer() in bpf/tunnels.bpf.h plus
the UDP checksum of bpf/csum.bpf.h; tests/bpf/test_tunnels_bytes.py holds
the two to the same bytes. `header_len` is the length both agree on, which
the daemon stores as the session's `hdr_len` and sorts session slots by.

Outer choices: IPv4 with DF set, ID 0 (atomic datagram, RFC 6864), TTL 64;
IPv6 with hop limit 64 and the inner flow hash as flow label; UDP source
port 49152 + (hash & 0x3fff). The outer UDP checksum is 0 over IPv4 (RFC
768 allows it; RFC 7348 and 8926 recommend it) and computed over IPv6, so
receivers need no zero-checksum exception (RFC 6935/6936: Linux's
udp6zerocsumrx).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from bpftap import tunnels
from bpftap.tunnels import gre
from bpftap.tunnels.common import ETH_HLEN, IPPROTO_GRE, IPPROTO_UDP, UDP_HLEN, Header

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IP_HLEN: Final = {4: 20, 6: 40}
UDP_SPORT_BASE: Final = 49152
UDP_SPORT_MASK: Final = 0x3FFF
TTL: Final = 64


def tunnel_len(tunnel: str, *, key: bool = False, seq: bool = False, platform: bool = True) -> int:
    """Bytes after the outer IP header, before the inner frame. `key`/`seq` matter for gre only, `platform`
    (the platform sub-header) for erspan3 only.

    Raises ValueError for an unknown tunnel type.
    """
    kind = _type(tunnel)
    return (UDP_HLEN if kind.udp_port else 0) + kind.header_len(Header(key=key, seq_on=seq, platform=platform))


def _type(tunnel: str) -> tunnels.TunnelType:
    if tunnel not in tunnels.TYPES:
        raise ValueError(f"unknown tunnel type {tunnel!r}")
    return tunnels.TYPES[tunnel]


def header_len(tunnel: str, family: int, *, key: bool = False, seq: bool = False, platform: bool = True) -> int:
    """Bytes of outer headers, outer Ethernet included (what `hdr_len` holds). Raises ValueError."""
    if family not in IP_HLEN:
        raise ValueError(f"family {family} is not 4 or 6")
    return ETH_HLEN + IP_HLEN[family] + tunnel_len(tunnel, key=key, seq=seq, platform=platform)


@dataclass(frozen=True)
class Outer:
    """One session as the header builder sees it (`struct mirror_session`).

    `tun_id` is the VNI, the GRE key (sent only if `gre_key`) or the ERSPAN
    session id; `dst_port` matters for the UDP tunnels; `gre_seq` says
    whether a GRE copy carries a sequence number (ERSPAN always does),
    `erspan_platform` whether an ERSPAN III copy has the platform sub-header.
    """

    tunnel: str
    src_mac: bytes
    dst_mac: bytes
    src: IPAddress
    dst: IPAddress
    tun_id: int = 0
    dst_port: int = 0
    gre_key: bool = False
    gre_seq: bool = False
    erspan_platform: bool = True

    @property
    def family(self) -> int:
        return self.dst.version

    @property
    def header_len(self) -> int:
        return header_len(self.tunnel, self.family, key=self.gre_key, seq=self.gre_seq,
                          platform=self.erspan_platform)


def tunnel_payload(outer: Outer, inner: bytes, *, seq: int = 0, direction: int = 0, ifindex: int = 0,
                   timestamp_ns: int = 0) -> bytes:
    """The tunnel header and the inner frame: what follows the UDP header, or the whole GRE packet.

    Raises ValueError for an unknown tunnel type or out-of-range identifiers.
    """
    header = Header(outer.tun_id, key=outer.gre_key, seq_on=outer.gre_seq, platform=outer.erspan_platform, seq=seq,
                    direction=direction, ifindex=ifindex, timestamp_ns=timestamp_ns)
    return _type(outer.tunnel).encode(header, inner)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum of `data` (padded to even length)."""
    return gre.checksum(data)


def encapsulate(outer: Outer, inner: bytes, *, hash: int = 0, seq: int = 0, direction: int = 0,
                ifindex: int = 0, timestamp_ns: int = 0) -> bytes:
    """The whole copy of `inner` for `outer`'s session, byte for byte what mirror_encap sends.

    `hash` is the inner flow hash (UDP source port, IPv6 flow label), `seq`
    the session's sequence number for this copy, `direction`/`ifindex` the
    source side (0 unknown), `timestamp_ns` the packet's realtime clock.
    Raises ValueError for an unknown tunnel or out-of-range identifiers.
    """
    payload = tunnel_payload(outer, inner, seq=seq, direction=direction, ifindex=ifindex,
                             timestamp_ns=timestamp_ns)
    v6 = outer.family == 6
    if _type(outer.tunnel).udp_port:
        sport = UDP_SPORT_BASE + (hash & UDP_SPORT_MASK)
        length = UDP_HLEN + len(payload)
        check = 0
        if v6:
            pseudo = outer.src.packed + outer.dst.packed + struct.pack("!II", length, IPPROTO_UDP)
            check = internet_checksum(pseudo + struct.pack("!HHHH", sport, outer.dst_port, length, 0) + payload)
            check = check or 0xFFFF
        payload = struct.pack("!HHHH", sport, outer.dst_port, length, check) + payload
        proto = IPPROTO_UDP
    else:
        proto = IPPROTO_GRE
    if v6:
        first = 6 << 28 | (hash & 0xFFFFF)
        ip = struct.pack("!IHBB", first, len(payload), proto, TTL) + outer.src.packed + outer.dst.packed
        ethertype = 0x86DD
    else:
        head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0x4000, TTL, proto, 0)
        head += outer.src.packed + outer.dst.packed
        ip = head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:]
        ethertype = 0x0800
    return outer.dst_mac + outer.src_mac + struct.pack("!H", ethertype) + ip + payload
