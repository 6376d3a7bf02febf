"""Outer IPv4 and IPv6 parsing and fragment reassembly for the capture inputs.

UDP and raw sockets get whole datagrams (the kernel reassembles them);
frames read from an interface (AF_PACKET) or a pcap file do not, so
``Reassembler.feed`` takes an IP packet, header first, and returns the
datagram it completes: its family, addresses, upper-layer protocol and
upper-layer bytes (after every IPv6 extension header). Unfragmented
packets and IPv6 atomic fragments (RFC 6946) come straight back.

Rules, the kernel's where the RFCs leave a choice (net/ipv4/inet_fragment.c,
ip_fragment.c, ipv6/reassembly.c):

- a datagram is keyed by (source, destination, protocol, ID) for IPv4 and
  (source, destination, ID) for IPv6;
- a fragment whose bytes are all held already is a duplicate: dropped,
  the datagram kept (RFC 5722 erratum 3089);
- any other overlap discards the whole datagram (RFC 5722 for IPv6; Linux
  does the same for IPv4 since 4.19), and so does a fragment that
  contradicts the datagram's end (data past the last fragment, two
  different last fragments); the datagram's later fragments are dropped
  silently until its timeout, and counted as ``late``;
- a fragment with no data, or with more to follow and a length that is not
  a multiple of 8, is dropped (``bad-length``; the kernel trims IPv4 ones,
  RFC 8200 drops IPv6 ones);
- a datagram that would exceed 65535 bytes is discarded (``too-big``);
- an IPv6 first fragment must hold the whole header chain up to and
  including the upper-layer header (RFC 8200 section 4.5, RFC 7112), else
  the datagram is discarded (``incomplete-chain``);
- a datagram not complete ``timeout`` seconds after the first of its fragments arrived is
  dropped (``timeout``; 30 s as the kernel's ipfrag_time);
- memory is bounded: at most ``max_bytes`` of fragment data and
  ``max_datagrams`` datagrams (discarded ones included) in flight; the
  oldest go first (``evicted``).

Times are whatever clock the caller passes as ``now`` (seconds): the
capture's packet timestamps, so that reading a file replays its timeouts.
Malformed IP headers raise DecapError (tunnel "ip"); nothing else raises.
"""

from __future__ import annotations

import socket
import struct
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, NamedTuple

from bpftap.tunnels.common import DecapError

DEFAULT_TIMEOUT: Final = 30.0
#: the kernel's net.ipv4.ipfrag_high_thresh default
DEFAULT_MAX_BYTES: Final = 4 << 20
DEFAULT_MAX_DATAGRAMS: Final = 1024
MAX_DATAGRAM: Final = 65535
#: IPv6 extension headers walked to find the upper layer; a longer chain is malformed
MAX_EXT_HEADERS: Final = 8

IPPROTO_FRAGMENT: Final = 44
IPPROTO_AH: Final = 51
#: IPv6 extension headers with the generic (next, length in 8-byte units) layout, and AH
_EXT_HEADERS: Final = frozenset({0, 43, 60, 135, 139, 140, IPPROTO_AH})
#: bytes of an upper-layer header the first fragment must hold (UDP, TCP, ICMPv6, GRE)
_UPPER_MIN: Final = {17: 8, 6: 20, 58: 4, 47: 4}

#: Every counter of ``Reassembler.counts``: fragments seen and datagrams completed, then drops
COUNTERS: Final = ("fragments", "reassembled", "duplicate", "overlap", "conflict", "late", "bad-length",
                   "too-big", "incomplete-chain", "timeout", "evicted")
#: Every reason a DecapError from ``feed`` can carry (tunnel "ip").
REASONS: Final = ("short", "version", "header", "checksum", "ext-headers")

_V4: Final = struct.Struct("!BBHHHBB")
_V6_FRAG: Final = struct.Struct("!BBHI")
_V4_WORDS: Final = struct.Struct("!10H")


class Datagram(NamedTuple):
    """A whole IP datagram: addresses packed (4 or 16 bytes), upper-layer protocol and bytes."""

    family: int
    src: bytes
    dst: bytes
    proto: int
    payload: bytes

    @property
    def source(self) -> str:
        """The source address as text."""
        return socket.inet_ntop(socket.AF_INET if self.family == 4 else socket.AF_INET6, self.src)


@dataclass(frozen=True)
class Limits:
    """Reassembly bounds: seconds to wait for a datagram, bytes and datagrams in flight."""

    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_datagrams: int = DEFAULT_MAX_DATAGRAMS

    def __post_init__(self) -> None:
        if not self.timeout > 0 or self.max_bytes <= 0 or self.max_datagrams <= 0:
            raise ValueError(f"reassembly limits must be positive: {self}")


class _Queue:
    """One datagram in reassembly: its fragments sorted by offset, none overlapping."""

    __slots__ = ("created", "dead", "end", "frags", "held", "l4_offset", "last", "proto", "starts", "unfrag")

    def __init__(self, created: float, unfrag: int) -> None:
        self.created = created
        self.starts: list[int] = []
        self.frags: list[tuple[int, bytes]] = []  # (offset, data), sorted by offset
        self.held = 0  # bytes of data held
        self.end = 0  # highest end seen; the datagram's length once `last`
        self.last = False
        self.dead = False  # discarded: its later fragments are dropped as `late`
        self.proto = 0  # upper-layer protocol, from the first fragment
        self.l4_offset = 0  # IPv6: extension headers before the upper layer, in the fragmentable part
        self.unfrag = unfrag  # header bytes that count toward the 65535 limit


def _checksum_ok(header: bytes) -> bool:
    """RFC 1071: the one's-complement sum of an IPv4 header, checksum included, is 0xffff."""
    words = _V4_WORDS.unpack(header) if len(header) == 20 else struct.unpack(f"!{len(header) // 2}H", header)
    total: int = sum(words)
    total = (total & 0xFFFF) + (total >> 16)  # at most 30 words: two folds are enough
    total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _walk(data: bytes, offset: int, nh: int) -> tuple[int, int]:
    """Follow IPv6 extension headers from `offset` with next header `nh`; return (protocol, offset).

    Stops at the first header that is not in _EXT_HEADERS (the upper layer,
    or a fragment header). Returns offset -1 when the chain runs past
    `data`. Raises DecapError "ext-headers" for a chain longer than
    MAX_EXT_HEADERS.
    """
    for _ in range(MAX_EXT_HEADERS):
        if nh not in _EXT_HEADERS:
            break
        if offset + 2 > len(data):
            return nh, -1
        size = (data[offset + 1] + 2) * 4 if nh == IPPROTO_AH else (data[offset + 1] + 1) * 8
        nh, offset = data[offset], offset + size
    else:
        if nh in _EXT_HEADERS:
            raise DecapError("ip", "ext-headers", f"more than {MAX_EXT_HEADERS} IPv6 extension headers")
    return nh, offset if offset <= len(data) else -1


class Reassembler:
    """Reassemble outer IPv4 and IPv6 fragments within ``limits``; see the module docstring.

    ``counts`` holds every COUNTERS entry; ``pending`` says what is in flight.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.bytes_held = 0
        self._queues: OrderedDict[tuple[int | bytes, ...], _Queue] = OrderedDict()

    @property
    def pending(self) -> tuple[int, int]:
        """Datagrams being reassembled and the bytes they hold (discarded ones not counted)."""
        return sum(not q.dead for q in self._queues.values()), self.bytes_held

    def feed(self, packet: bytes, now: float) -> Datagram | None:
        """Take one IP packet (header first; link padding allowed) seen at `now`.

        Returns the whole datagram if `packet` is one or completes one, else
        None (held, or dropped and counted). Raises DecapError (tunnel "ip",
        one of REASONS) for a header that is not valid IPv4 or IPv6.
        """
        if not packet:
            raise DecapError("ip", "short", "empty packet")
        version = packet[0] >> 4
        if version == 4:
            return self._feed4(packet, now)
        if version == 6:
            return self._feed6(packet, now)
        raise DecapError("ip", "version", f"version {version}")

    def _feed4(self, packet: bytes, now: float) -> Datagram | None:
        if len(packet) < 20:
            raise DecapError("ip", "short", f"{len(packet)} bytes, IPv4 needs 20")
        vihl, _tos, total, ident, frag, _ttl, proto = _V4.unpack_from(packet)
        ihl = (vihl & 0xF) * 4
        if ihl < 20 or total < ihl:
            raise DecapError("ip", "header", f"IHL {ihl} bytes, total length {total}")
        if total > len(packet):
            raise DecapError("ip", "short", f"total length {total}, {len(packet)} bytes captured")
        if not _checksum_ok(packet[:ihl]):
            raise DecapError("ip", "checksum", "bad IPv4 header checksum")
        src, dst = packet[12:16], packet[16:20]
        more, offset = frag & 0x2000, (frag & 0x1FFF) * 8
        if not more and not offset:
            return Datagram(4, src, dst, proto, packet[ihl:total])
        key = (src, dst, proto, ident)
        return self._fragment(key, 4, src, dst, offset, bool(more), packet[ihl:total], ihl, proto, 0, now)

    def _feed6(self, packet: bytes, now: float) -> Datagram | None:
        if len(packet) < 40:
            raise DecapError("ip", "short", f"{len(packet)} bytes, IPv6 needs 40")
        end = 40 + int.from_bytes(packet[4:6], "big")
        if end > len(packet):
            raise DecapError("ip", "short", f"payload length {end - 40}, {len(packet) - 40} bytes captured")
        src, dst = packet[8:24], packet[24:40]
        nh, off = _walk(packet[:end], 40, packet[6])
        if off < 0:
            raise DecapError("ip", "header", "extension headers run past the packet")
        if nh != IPPROTO_FRAGMENT:
            return Datagram(6, src, dst, nh, packet[off:end])
        if off + 8 > end:
            raise DecapError("ip", "header", "fragment header runs past the packet")
        first_nh, _res, frag, ident = _V6_FRAG.unpack_from(packet, off)
        data = packet[off + 8:end]
        more, offset = frag & 1, frag & 0xFFF8
        proto, l4 = -1, 0
        if offset == 0:
            proto, l4 = _walk(data, 0, first_nh)
            if l4 >= 0 and l4 + _UPPER_MIN.get(proto, 0) > len(data):
                l4 = -1
            if not more and l4 >= 0:  # atomic fragment (RFC 6946): a datagram of its own
                return Datagram(6, src, dst, proto, data[l4:])
        return self._fragment((src, dst, ident), 6, src, dst, offset, bool(more), data, off - 40, proto, l4, now)

    def _fragment(self, key: tuple[int | bytes, ...], family: int, src: bytes, dst: bytes, offset: int,
                  more: bool, data: bytes, unfrag: int, proto: int, l4: int, now: float) -> Datagram | None:
        """Add one fragment; `proto`/`l4` matter in a first fragment: the upper layer and where it
        starts in the data (-1: IPv6 header chain incomplete). `unfrag` is the header bytes that
        count toward the 65535-byte limit besides the data."""
        counts = self.counts
        counts["fragments"] += 1
        self.expire(now)
        queue = self._queues.get(key)
        if queue is not None and queue.dead:
            counts["late"] += 1
            return None
        size = len(data)
        end = offset + size
        if size == 0 or (more and size % 8):
            counts["bad-length"] += 1
            return None
        if queue is None:
            queue = self._new_queue(key, now, unfrag)
        if unfrag + end > MAX_DATAGRAM:
            self._discard(queue, "too-big")
            return None
        if offset == 0:
            if l4 < 0:
                self._discard(queue, "incomplete-chain")
                return None
            queue.proto, queue.l4_offset = proto, l4
        if (not more and (end < queue.end or (queue.last and end != queue.end))) or (
                more and queue.last and end > queue.end):
            self._discard(queue, "conflict")
            return None
        starts, frags = queue.starts, queue.frags
        i = bisect_right(starts, offset)
        if (i and starts[i - 1] + len(frags[i - 1][1]) > offset) or (i < len(starts) and starts[i] < end):
            return self._overlap(queue, i, offset, end)
        self._make_room(queue, size)
        if queue.dead:  # evicted to make room for itself
            return None
        starts.insert(i, offset)
        frags.insert(i, (offset, data))
        queue.held += size
        self.bytes_held += size
        if not more:
            queue.last = True
        queue.end = max(queue.end, end)
        if not queue.last or queue.held != queue.end:
            return None
        del self._queues[key]
        self.bytes_held -= queue.held
        counts["reassembled"] += 1
        whole = b"".join(d for _, d in frags)
        return Datagram(family, src, dst, queue.proto, whole[queue.l4_offset:])

    def _new_queue(self, key: tuple[int | bytes, ...], now: float, unfrag: int) -> _Queue:
        while len(self._queues) >= self.limits.max_datagrams:
            self._evict_oldest()
        queue = self._queues[key] = _Queue(now, unfrag)
        return queue

    def _overlap(self, queue: _Queue, i: int, offset: int, end: int) -> Datagram | None:
        """A duplicate if held fragments cover [offset, end) already, else discard the datagram."""
        starts, frags = queue.starts, queue.frags
        j = i - 1 if i and starts[i - 1] + len(frags[i - 1][1]) > offset else i
        covered = offset
        while j < len(starts) and starts[j] <= covered < end:
            covered = max(covered, starts[j] + len(frags[j][1]))
            j += 1
        if covered >= end:
            self.counts["duplicate"] += 1
            return None
        self._discard(queue, "overlap")
        return None

    def _discard(self, queue: _Queue, reason: str) -> None:
        """Drop the datagram's data, keep its key until timeout so that later fragments count as late."""
        self.counts[reason] += 1
        self.bytes_held -= queue.held
        queue.dead, queue.held, queue.starts, queue.frags = True, 0, [], []

    def _make_room(self, queue: _Queue, size: int) -> None:
        while self.bytes_held + size > self.limits.max_bytes and not queue.dead:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, oldest = self._queues.popitem(last=False)
        if not oldest.dead:
            self.counts["evicted"] += 1
            self.bytes_held -= oldest.held
            oldest.dead = True

    def expire(self, now: float) -> None:
        """Drop datagrams older than the timeout (counted as ``timeout`` unless already discarded)."""
        queues, limit = self._queues, now - self.limits.timeout
        while queues:
            oldest = next(iter(queues.values()))
            if oldest.created > limit:
                return
            queues.popitem(last=False)
            if not oldest.dead:
                self.counts["timeout"] += 1
                self.bytes_held -= oldest.held
