"""Capture inputs: underlay Ethernet frames (from an interface or a pcap file) to tunnel payloads.

A collector behind a SPAN or TAP port, or one reading a capture taken on
the underlay, sees the copies as the wire carries them: Ethernet, maybe
802.1Q tags, outer IPv4 or IPv6, possibly fragmented, UDP or GRE. The
kernel reassembles nothing for it, so ``Underlay.payload`` does what the
kernel's IP and UDP layers do for the sockets: skip the tags, reassemble
(collector.reassembly), pick the tunnel by destination port (VXLAN,
GENEVE) or IP protocol 47 (GRE, ERSPAN) and hand over what a UDP or raw
IPv6 socket would. Frames that are not tunnel traffic for this collector
(other EtherTypes, protocols, ports or destination addresses) are counted
in ``ignored``.

``PcapReader`` reads a classic libpcap file of Ethernet frames (tcpdump's
``-w`` format; both byte orders, micro- or nanosecond stamps).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from bpftap.collector.pcapng import LINKTYPE_ETHERNET
from bpftap.collector.reassembly import Limits, Reassembler
from bpftap.tunnels import GRE_PROTOCOLS
from bpftap.tunnels.common import ETH_HLEN, IPPROTO_GRE, IPPROTO_UDP, UDP_HLEN, VLAN_TPIDS, DecapError

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
MAX_TAGS: Final = 2
#: classic pcap magic numbers: microsecond and nanosecond timestamps
PCAP_MAGIC_US: Final = 0xA1B2C3D4
PCAP_MAGIC_NS: Final = 0xA1B23C4D
PCAPNG_MAGIC: Final = b"\x0a\x0d\x0d\x0a"
MAX_CAPLEN: Final = 262_144  # libpcap's MAXIMUM_SNAPLEN: no tool writes a longer record


class Underlay:
    """Turn underlay frames into (kind, payload, sender, sender port) for the tunnel decoders.

    ``addr`` filters on the outer destination (``0.0.0.0`` and ``::`` take
    any destination of either family); ``ports`` maps UDP destination ports
    to "vxlan"/"geneve"; ``gre`` says whether IP protocol 47 is taken.
    ``limits`` bounds reassembly.
    """

    def __init__(self, addr: str, ports: dict[int, str], gre: bool, limits: Limits | None = None) -> None:
        self.reassembler = Reassembler(limits)
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        packed = socket.inet_pton(family, addr)
        self.dst: bytes | None = None if not any(packed) else packed
        self.ports = dict(ports)
        self.protos = frozenset(([IPPROTO_UDP] if ports else []) + ([IPPROTO_GRE] if gre else []))
        self.ignored = 0

    def payload(self, frame: bytes, now: float) -> tuple[str, bytes, str, int] | None:
        """The tunnel payload `frame` carries or completes, or None (ignored, or a fragment held/dropped).

        Returns (kind, payload, sender address, sender UDP port or 0): kind
        "vxlan"/"geneve" with the UDP payload, or "gre" with the GRE packet.
        `now` (seconds) drives the reassembly timeout. Raises DecapError
        (tunnel "ip" or "udp") for a malformed outer IP or UDP header.
        """
        off = ETH_HLEN
        ethertype = int.from_bytes(frame[12:14], "big")
        for _ in range(MAX_TAGS):
            if ethertype not in VLAN_TPIDS:
                break
            ethertype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
        if ethertype == ETH_P_IP:
            dst, proto = frame[off + 16:off + 20], frame[off + 9] if len(frame) > off + 9 else -1
        elif ethertype == ETH_P_IPV6:
            dst, proto = frame[off + 24:off + 40], -1  # the protocol may follow extension headers
        else:
            self.ignored += 1
            return None
        if (self.dst is not None and dst != self.dst) or (proto >= 0 and proto not in self.protos):
            self.ignored += 1
            return None
        datagram = self.reassembler.feed(frame[off:], now)
        if datagram is None:
            return None
        data = datagram.payload
        if datagram.proto == IPPROTO_GRE and IPPROTO_GRE in self.protos:
            return "gre", data, datagram.source, 0
        if datagram.proto == IPPROTO_UDP and len(data) >= UDP_HLEN:
            sport, dport, length = struct.unpack_from("!HHH", data)
            kind = self.ports.get(dport)
            if kind is not None:
                if not UDP_HLEN <= length <= len(data):
                    raise DecapError("udp", "length", f"UDP length {length}, {len(data)} bytes of datagram")
                return kind, data[UDP_HLEN:length], datagram.source, sport
        self.ignored += 1
        return None


def underlay_for(addr: str, vxlan_port: int, geneve_port: int, tunnels: Iterable[str],
                 limits: Limits | None = None) -> Underlay:
    """The Underlay taking the given tunnel types on their ports (see Underlay)."""
    wanted = set(tunnels)
    ports = {port: kind for kind, port in (("geneve", geneve_port), ("vxlan", vxlan_port)) if kind in wanted}
    return Underlay(addr, ports, bool(wanted & set(GRE_PROTOCOLS.values())), limits)


class PcapReader:
    """Frames of a classic pcap file: iterate for (timestamp in ns since the epoch, frame).

    The constructor opens the file and checks its header: raises OSError if
    it cannot be read, ValueError naming the file if it is not a classic
    pcap of Ethernet frames (pcapng gets a hint to convert it). Iterating
    raises ValueError "cut short at byte N" when the file ends inside a
    record (header or frame), and for a record longer than MAX_CAPLEN.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._record, self._scale = self._header(self._fh.read(24))
        except ValueError:
            self.close()
            raise

    def _header(self, head: bytes) -> tuple[struct.Struct, int]:
        """The record header layout and the timestamp fraction's unit in ns."""
        if head[:4] == PCAPNG_MAGIC:
            raise ValueError(f"{self.path}: pcapng, not classic pcap; convert it with "
                             f"'editcap -F pcap {self.path} OUT.pcap', or capture with 'tcpdump -w'")
        if len(head) < 24:
            raise ValueError(f"{self.path}: not a pcap file ({len(head)} bytes, the header needs 24)")
        for endian in "<>":
            magic = struct.unpack_from(endian + "I", head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise ValueError(f"{self.path}: not a pcap file (magic {head[:4].hex()})")
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0xFFFF
        if linktype != LINKTYPE_ETHERNET:
            raise ValueError(f"{self.path}: link type {linktype}; only Ethernet ({LINKTYPE_ETHERNET}) is read")
        return struct.Struct(endian + "IIII"), 1 if magic == PCAP_MAGIC_NS else 1000

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        fh, record, offset = self._fh, self._record, 24
        while rec := fh.read(record.size):
            if len(rec) < record.size:
                raise ValueError(f"{self.path}: cut short at byte {offset + len(rec)}: record header at offset "
                                 f"{offset} has {len(rec)} of its {record.size} bytes")
            sec, frac, caplen, _origlen = record.unpack(rec)
            if caplen > MAX_CAPLEN:
                # read() would allocate caplen bytes first: a hostile length is refused, not trusted
                raise ValueError(f"{self.path}: record at offset {offset} claims {caplen} bytes; "
                                 f"a pcap record holds at most {MAX_CAPLEN}")
            frame = fh.read(caplen)
            if len(frame) < caplen:
                raise ValueError(f"{self.path}: cut short at byte {offset + record.size + len(frame)}: record at "
                                 f"offset {offset} has {len(frame)} of its {caplen} bytes")
            offset += record.size + caplen
            yield sec * 1_000_000_000 + frac * self._scale, frame

    def close(self) -> None:
        """Close the file; safe to call more than once."""
        self._fh.close()
