"""The collector's receive loop: sockets -> tunnel decoders -> PcapngWriter.

One thread polls every socket (collector.sockets): UDP for VXLAN and
GENEVE, raw IP protocol 47 for GRE, ERSPAN II and III. No queue of our own:
the kernel's socket buffers are the bounded queues, and its
``RcvbufErrors`` counters show what overflowed them. Each frame gets the
kernel's receive timestamp (SO_TIMESTAMPNS), the time the copy arrived
(ERSPAN III's own timestamp, the original packet's time, goes in the
comment). Each frame's comment carries the tunnel metadata and sender, e.g.
``tunnel=erspan3 session=7 seq=12 dir=egress if=3 ts=... from=198.18.2.254``,
and its pcapng flags the direction where the tunnel says it.

Every datagram is counted: ``received == written + filtered +
sum(malformed.values())``, ``filtered`` being the inner frames a
``--filter`` expression (libpcap's matcher, bpftap.filter.pcap) left out.
Reasons in ``malformed`` are ``<tunnel>:<reason>`` from the decoders (and
``ip:<reason>`` for a bad IPv4 header on the raw socket), ``"vni"`` (a
VXLAN/GENEVE frame for a VNI outside ``--vni``), ``"tunnel"`` (a GRE-based
type outside ``--tunnel``) and ``"truncated"`` (bigger than the receive
buffer). Nothing a sender puts in a datagram can make ``serve()`` raise.

Capture inputs (``interface``: a packet socket on one interface;
``read``: a classic pcap file) take underlay frames instead and do what the
kernel does for the sockets (collector.underlay, collector.reassembly):
``captured`` counts the frames, ``ignored`` those that are not tunnel
traffic for this collector, ``reassembly`` the fragments, the datagrams
they made and every drop by reason; each whole or reassembled datagram
then counts in ``received`` like a socket's, as does a frame with a
malformed outer IP or UDP header (``ip:<reason>``, ``udp:length``).
Reassembly timeouts run on the frames' timestamps, so a file replays as it
was captured. Frames the interface sends itself are ignored.

Sequence numbers (GRE, ERSPAN, bpftap's GENEVE option) are followed per
sender and session (`bpftap.collector.sequence`): ``lost`` and ``reordered``
copies.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bpftap.collector.pcapng import PcapngWriter
from bpftap.collector.reassembly import MAX_DATAGRAM, Limits
from bpftap.collector.sequence import SequenceFollower
from bpftap.collector.sockets import (
    ANC_SPACE,
    PACKET_OUTGOING,
    CollectorError,
    Listener,
    capture_drops,
    format_endpoint,
    kernel_ts,
    open_capture,
    open_socket,
    parse_listen,
    sender,
)
from bpftap.collector.underlay import PcapReader, Underlay, underlay_for
from bpftap.filter.pcap import CompiledFilter
from bpftap.tunnels import DECODERS, GRE_TUNNELS, TUNNELS, UDP_TUNNELS, DecapError, Meta, decode_gre, geneve, raw

__all__ = ["Collector", "CollectorError", "CollectorStats", "format_endpoint", "format_summary", "parse_listen"]

POLL_INTERVAL = 0.2
#: a frame read from an interface: the largest IP datagram, Ethernet and two VLAN tags
MAX_FRAME = MAX_DATAGRAM + 22
#: pcapng epb_flags direction bits by MirrorDir value: 1 inbound, 2 outbound
EPB_DIRECTION = {1: 0b01, 2: 0b10}

K = TypeVar("K", str, int)


@dataclass
class CollectorStats:
    """Counters of one ``serve()`` run.

    ``per_session`` counts frames written by ``tunnel/id`` (``gre`` alone
    for GRE without a key); ``per_sender`` counts every datagram received
    (but a captured frame whose outer header is malformed), keyed by the
    sender's IP address (without the port: UDP tunnel senders
    vary the source port per flow). ``lost`` and ``reordered`` count
    sequence-number gaps and steps back per session. ``captured``,
    ``kernel_drops`` (frames the interface's packet socket dropped before
    they were read), ``ignored``, ``reassembly`` and ``pending`` (datagrams and bytes still
    in reassembly when the collector stopped) belong to the capture inputs;
    ``reassembly`` is None for sockets (the kernel reassembles).
    ``filtered`` counts inner frames that did not match ``filter`` (the
    expression, None without one).
    """

    received: int = 0
    written: int = 0
    filtered: int = 0
    filter: str | None = None
    malformed: dict[str, int] = field(default_factory=dict)
    per_session: dict[str, int] = field(default_factory=dict)
    per_sender: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    reordered: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    files: list[Path] = field(default_factory=list)
    captured: int = 0
    kernel_drops: int = 0
    ignored: int = 0
    reassembly: dict[str, int] | None = None
    pending: tuple[int, int] = (0, 0)


def _bump(counts: dict[K, int], key: K, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


def session_label(meta: Meta) -> str:
    """``vxlan/42``, ``erspan3/7``, or ``gre`` for GRE without a key."""
    return meta.tunnel if meta.id is None else f"{meta.tunnel}/{meta.id}"


class Collector:
    """Receive tunnelled copies on ``addr`` and write the inner frames to ``out``.

    ``port`` is VXLAN's UDP port and ``geneve_port`` GENEVE's (0: an
    ephemeral one, read back after ``bind()``). ``tunnels`` limits the
    accepted types (default: all of bpftap.tunnels.TUNNELS); without it, a
    host that refuses raw sockets (no CAP_NET_RAW) receives the UDP types
    only and says so in ``warnings``. ``vnis``, if given, keeps only those
    VXLAN/GENEVE VNIs. ``interface`` reads that interface's frames instead
    of opening sockets, ``read`` a pcap file (see collector.underlay;
    ``addr`` then filters on the outer destination, any if unspecified, and
    ``limits`` bounds reassembly). ``inner_filter`` keeps only the inner
    frames it matches (their sequence numbers still count). Use ``bind()``
    (or let ``serve()`` do it), then ``serve()`` once. Raises ValueError from the constructor for an
    address that is not an IP literal, a port out of range or an unknown
    tunnel type.
    """

    def __init__(
        self,
        addr: str,
        port: int,
        out: Path,
        rotate_bytes: int | None = None,
        vnis: Iterable[int] | None = None,
        *,
        tunnels: Iterable[str] | None = None,
        geneve_port: int = geneve.GENEVE_PORT,
        interface: str | None = None,
        read: Path | None = None,
        limits: Limits | None = None,
        inner_filter: CompiledFilter | None = None,
    ) -> None:
        self.addr = str(ipaddress.ip_address(addr))
        for p in (port, geneve_port):
            if not 0 <= p <= 65535:
                raise ValueError(f"port {p} is not 0..65535")
        self.port, self.geneve_port = port, geneve_port
        self.explicit_tunnels = tunnels is not None
        self.tunnels = frozenset(TUNNELS if tunnels is None else tunnels)
        unknown = self.tunnels - set(TUNNELS)
        if unknown or not self.tunnels:
            raise ValueError(f"unknown tunnel types {sorted(unknown)}; known: {', '.join(TUNNELS)}")
        self.out = Path(out)
        self.rotate_bytes = rotate_bytes
        self.vnis = frozenset(vnis) if vnis is not None else None
        self.kernel_timestamps = False
        self.stats = CollectorStats()
        self.listeners: list[Listener] = []
        self.warnings: list[str] = []
        self._seqs = SequenceFollower(self.stats.lost, self.stats.reordered)
        self._match = inner_filter.matcher() if inner_filter is not None else None
        self.stats.filter = inner_filter.expression if inner_filter is not None else None
        self._writer: PcapngWriter | None = None
        self._closed = False
        self.interface, self.read = interface, read
        self._reader: PcapReader | None = None
        self._underlay: Underlay | None = None
        if interface is not None or read is not None:
            self._underlay = underlay_for(self.addr, port, geneve_port, self.tunnels, limits)
            self.stats.reassembly = self._underlay.reassembler.counts

    @property
    def address(self) -> str:
        """The VXLAN endpoint as ``ADDR:PORT`` / ``[V6ADDR]:PORT``."""
        return format_endpoint(self.addr, self.port)

    def describe(self) -> str:
        """Every socket and the types it takes: ``udp 0.0.0.0:4789 (vxlan), ...``."""
        if self._underlay is not None:
            source = f"every frame received on {self.interface}" if self.read is None else f"frames of {self.read}"
            kinds = [f"{kind} udp/{port}" for port, kind in sorted(self._underlay.ports.items())]
            kinds += [t for t in GRE_TUNNELS if t in self.tunnels]
            to = "any address" if self._underlay.dst is None else self.addr
            return f"{source} ({', '.join(kinds)} to {to})"
        parts = []
        for lst in self.listeners:
            kinds = [t for t in GRE_TUNNELS if t in self.tunnels] if lst.kind == "gre" else [lst.kind]
            parts.append(f"{lst.describe()} ({', '.join(kinds)})")
        return ", ".join(parts)

    def _plan(self) -> list[tuple[str, str, int]]:
        if self.read is not None:
            return []
        if self.interface is not None:
            return [("capture", self.interface, 0)]
        plan = [(kind, self.addr, port) for kind, port in (("vxlan", self.port), ("geneve", self.geneve_port))
                if kind in self.tunnels]
        if self.tunnels & set(GRE_TUNNELS):
            plan.append(("gre", self.addr, 0))
            if self.addr == "::":
                plan.append(("gre", "0.0.0.0", 0))  # noqa: S104 - "::" asked for every address, IPv4's too
        return plan

    def bind(self) -> None:
        """Open and bind every socket, then create the first output file.

        Raises CollectorError naming the address when a socket cannot be
        created or bound (see sockets.open_socket), or naming the file when
        it cannot be created; nothing stays open then. Raises ValueError
        once the collector has been closed: it serves only once.
        """
        if self._writer is not None:
            return
        if self._closed:
            raise ValueError("collector already closed; make a new one")
        try:
            for kind, addr, port in self._plan():
                try:
                    listener, stamps = open_capture(addr) if kind == "capture" else open_socket(kind, addr, port)
                except CollectorError as exc:
                    if kind == "gre" and not self.explicit_tunnels and exc.errno in (1, 13):
                        self.warnings.append(f"not receiving GRE or ERSPAN: {exc}")
                        self.tunnels -= set(GRE_TUNNELS)
                        continue
                    raise
                self.listeners.append(listener)
                self.kernel_timestamps = stamps if len(self.listeners) == 1 else self.kernel_timestamps and stamps
                if kind == "vxlan":
                    self.port = listener.port
                elif kind == "geneve":
                    self.geneve_port = listener.port
            if self.read is not None:
                try:
                    self._reader = PcapReader(self.read)
                except OSError as exc:
                    raise CollectorError("read capture", str(self.read), exc.errno or 0) from exc
                except ValueError as exc:
                    raise CollectorError("read capture", str(self.read), 0,
                                         str(exc).removeprefix(f"{self.read}: ")) from exc
            try:
                self._writer = PcapngWriter(self.out, self.rotate_bytes)
            except OSError as exc:
                raise CollectorError("create capture file", str(self.out), exc.errno or 0,
                                     "check that the directory exists and is writable") from exc
        except BaseException:
            self._close_sockets()
            if self._reader is not None:
                self._reader.close()
            raise
        self.stats.files = self._writer.files
        self.stats.bytes_written = self._writer.bytes_written

    def serve(
        self,
        stop: threading.Event | None = None,
        max_packets: int | None = None,
        duration: float | None = None,
    ) -> CollectorStats:
        """Receive until ``stop`` is set, ``max_packets`` frames are written or
        ``duration`` seconds pass, whichever comes first; then close sockets
        and file and return the stats. Reacts to ``stop`` within
        POLL_INTERVAL seconds.

        With ``read``, stops at the end of the file too (``duration`` does
        not apply). Raises CollectorError from ``bind()``, if writing the
        capture fails (disk full, ...) or if the file read is cut inside a
        record header; malformed datagrams are counted, never raised.
        """
        self.bind()
        if self._reader is not None:
            try:
                self._replay(self._reader, stop, max_packets)
            finally:
                self.close()
            return self.stats
        deadline = None if duration is None else time.monotonic() + duration
        selector = selectors.DefaultSelector()
        for lst in self.listeners:
            selector.register(lst.sock, selectors.EVENT_READ, lst)
        try:
            while stop is None or not stop.is_set():
                if max_packets is not None and self.stats.written >= max_packets:
                    break
                timeout = POLL_INTERVAL
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        break
                for key, _ in selector.select(timeout):
                    self._drain(key.data, max_packets)
                if self._underlay is not None:
                    self._underlay.reassembler.expire(time.time())
        finally:
            selector.close()
            self.close()
        return self.stats

    def _drain(self, lst: Listener, max_packets: int | None) -> None:
        """Read what one socket holds (up to 64 datagrams, so no socket starves the others)."""
        for _ in range(64):
            if max_packets is not None and self.stats.written >= max_packets:
                return
            try:
                data, anc, flags, addr = lst.sock.recvmsg(MAX_FRAME if lst.kind == "capture" else MAX_DATAGRAM,
                                                          ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            if lst.kind == "capture":
                self._frame(data, kernel_ts(anc) or time.time_ns(), flags & socket.MSG_TRUNC,
                            addr[2] == PACKET_OUTGOING)
            else:
                self._handle(lst, data, anc, flags, addr)

    def _replay(self, reader: PcapReader, stop: threading.Event | None, max_packets: int | None) -> None:
        try:
            for ts_ns, frame in reader:
                if (stop is not None and stop.is_set()) or (
                        max_packets is not None and self.stats.written >= max_packets):
                    return
                self._frame(frame, ts_ns)
        except ValueError as exc:
            raise CollectorError("read capture", str(reader.path), 0,
                                 str(exc).removeprefix(f"{reader.path}: ")) from exc

    def _frame(self, frame: bytes, ts_ns: int, truncated: int = 0, outgoing: bool = False) -> None:
        """One underlay frame from a capture input: reassemble, pick the tunnel, then as ``_accept``."""
        stats, underlay = self.stats, self._underlay
        assert underlay is not None
        stats.captured += 1
        if outgoing:
            underlay.ignored += 1
            stats.ignored = underlay.ignored
            return
        if truncated:
            stats.received += 1
            _bump(stats.malformed, "truncated")
            return
        try:
            found = underlay.payload(frame, ts_ns / 1e9)
        except DecapError as exc:
            stats.received += 1
            _bump(stats.malformed, f"{exc.tunnel}:{exc.reason}")
            return
        if found is None:
            stats.ignored = underlay.ignored
            return
        kind, payload, host, port = found
        stats.received += 1
        _bump(stats.per_sender, host)
        try:
            meta, inner = decode_gre(payload) if kind == "gre" else DECODERS[kind](payload)
        except DecapError as exc:
            _bump(stats.malformed, f"{exc.tunnel}:{exc.reason}")
            return
        self._accept(kind, meta, inner, ts_ns, host, port)

    def _decode(self, lst: Listener, data: bytes) -> tuple[Meta, bytes]:
        if lst.kind == "gre":
            return decode_gre(raw.strip_ipv4(data) if lst.family == 4 else data)
        return DECODERS[lst.kind](data)

    def _handle(self, lst: Listener, data: bytes, anc: list[tuple[int, int, bytes]], flags: int,
                addr: tuple[Any, ...]) -> None:
        stats = self.stats
        stats.received += 1
        host, port = sender(addr)
        _bump(stats.per_sender, host)
        if flags & socket.MSG_TRUNC:
            _bump(stats.malformed, "truncated")
            return
        try:
            meta, inner = self._decode(lst, data)
        except DecapError as exc:
            _bump(stats.malformed, f"{exc.tunnel}:{exc.reason}")
            return
        self._accept(lst.kind, meta, inner, kernel_ts(anc) or time.time_ns(), host, port)

    def _accept(self, kind: str, meta: Meta, inner: bytes, ts_ns: int, host: str, port: int) -> None:
        """Filter a decoded frame by tunnel type and VNI, follow its sequence number, match --filter, write it."""
        stats = self.stats
        if meta.tunnel not in self.tunnels:
            _bump(stats.malformed, "tunnel")
            return
        if self.vnis is not None and meta.tunnel in UDP_TUNNELS and meta.id not in self.vnis:
            _bump(stats.malformed, "vni")
            return
        label = session_label(meta)
        if meta.seq is not None:  # before --filter: a frame left out is no copy lost
            self._seqs.follow(host, label, meta.seq)
        if self._match is not None and not self._match(inner):
            stats.filtered += 1
            return
        where = format_endpoint(host, port) if kind in UDP_TUNNELS else host
        assert self._writer is not None
        try:
            self._writer.write(inner, ts_ns, f"{meta.describe()} from={where}",
                               flags=EPB_DIRECTION.get(meta.direction or 0))
        except OSError as exc:
            raise CollectorError("write capture file", str(self._writer.files[-1]),
                                 exc.errno or 0) from exc
        stats.written += 1
        stats.bytes_written = self._writer.bytes_written
        _bump(stats.per_session, label)

    def _close_sockets(self) -> None:
        for lst in self.listeners:
            if lst.kind == "capture":
                self.stats.kernel_drops += capture_drops(lst.sock)
            lst.sock.close()
        self.listeners = []

    def close(self) -> None:
        """Close the sockets and the capture file; safe to call more than once."""
        self._closed = True
        self._close_sockets()
        if self._reader is not None:
            self._reader.close()
        if self._underlay is not None:
            self.stats.pending = self._underlay.reassembler.pending
        if self._writer is not None:
            self._writer.close()
            self.stats.bytes_written = self._writer.bytes_written
            self._writer = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def format_summary(stats: CollectorStats) -> str:
    """A short multi-line, human-readable summary of ``stats``."""
    files = "\n            ".join(str(p) for p in stats.files) or "none"
    return "\n".join([
        (f"received:   {stats.received} datagrams, wrote {stats.written} frames "
         f"({stats.bytes_written} bytes of pcapng)"),
        f"per session: {_counts(stats.per_session)}",
        f"per sender: {_counts(stats.per_sender)}",
        f"lost:       {_counts(stats.lost)} (sequence gaps)",
        f"reordered:  {_counts(stats.reordered)}",
        f"malformed:  {_counts(stats.malformed)}",
        *([f"filtered:   {stats.filtered} frames did not match --filter {stats.filter!r}"] if stats.filter else []),
        *_capture_lines(stats),
        f"files:      {files}",
    ])


def _capture_lines(stats: CollectorStats) -> list[str]:
    """The capture inputs' counters, or where reassembly happens for sockets."""
    if stats.reassembly is None:
        return ["reassembly: by the kernel (sockets receive whole datagrams)"]
    drops = {k: v for k, v in stats.reassembly.items() if v and k not in ("fragments", "reassembled")}
    return [
        (f"captured:   {stats.captured} frames, {stats.ignored} ignored (not tunnel traffic for this collector), "
         f"{stats.kernel_drops} dropped by the kernel (socket buffer full)"),
        (f"reassembly: {stats.reassembly['fragments']} fragments, {stats.reassembly['reassembled']} datagrams "
         f"reassembled, {stats.pending[0]} pending ({stats.pending[1]} bytes); dropped: {_counts(drops)}"),
    ]
