"""What a raw IP socket for protocol 47 hands over, down to the GRE packet.

An AF_INET raw socket delivers the whole IPv4 datagram (header included,
fragments already reassembled by the kernel); an AF_INET6 raw socket
delivers only the payload after the IPv6 header and its extension headers,
so the GRE packet needs no stripping there.
"""

from __future__ import annotations

from typing import Final

from bpftap.tunnels.common import IPPROTO_GRE, DecapError

#: Every reason a DecapError from ``strip_ipv4`` can carry.
REASONS: Final = ("short", "version", "header", "protocol")


def strip_ipv4(datagram: bytes) -> bytes:
    """The GRE packet inside an IPv4 datagram read from a raw socket.

    Raises DecapError (tunnel "ip") with reason "short" (cut off),
    "version" (not 4), "header" (IHL below 5 or past the end) or
    "protocol" (not GRE). Never raises anything else.
    """
    if len(datagram) < 20:
        raise DecapError("ip", "short", f"{len(datagram)} bytes, IPv4 needs 20")
    if datagram[0] >> 4 != 4:
        raise DecapError("ip", "version", f"version {datagram[0] >> 4}")
    ihl = (datagram[0] & 0xF) * 4
    total = int.from_bytes(datagram[2:4], "big")
    if ihl < 20 or ihl > len(datagram) or total < ihl:
        raise DecapError("ip", "header", f"IHL {ihl} bytes, total length {total}, {len(datagram)} bytes read")
    if datagram[9] != IPPROTO_GRE:
        raise DecapError("ip", "protocol", f"protocol {datagram[9]}, not GRE")
    # the kernel trims link padding; total length below the read size still wins
    return bytes(datagram[ihl:min(total, len(datagram))])
