"""The collector's receive loop: UDP socket -> vxlan.decode -> PcapngWriter.

One thread, one socket, no queue: the kernel's socket buffer (SO_RCVBUF,
4 MiB asked for) is the bounded queue, and the kernel's ``RcvbufErrors``
counter shows what overflowed it. Each frame gets the kernel's receive
timestamp (SO_TIMESTAMPNS), so the time in the capture is when the copy
arrived, not when Python got round to it; without the option the wall clock
at read time is used instead. Neither is the time the original packet was
seen on the tapped host: VXLAN carries no timestamp.

Every datagram is counted: ``received == written + sum(malformed.values())``.
Reasons in ``malformed`` are those of ``vxlan.REASONS`` plus ``"vni"`` (a
well-formed frame for a VNI outside the filter) and ``"truncated"`` (bigger
than the receive buffer). Nothing a sender puts in a datagram can make
``serve()`` raise.

Out of scope here: IP fragments of the outer packets are reassembled by the
kernel before the socket sees them; other tunnel types have their own codecs.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import ipaddress
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bpftap.collector import vxlan
from bpftap.collector.pcapng import PcapngWriter
from bpftap.errors import BpftapError

RCVBUF_BYTES = 4 << 20
POLL_INTERVAL = 0.2
MAX_DATAGRAM = 65535
#: Python's socket module does not export it; 35 is SO_TIMESTAMPNS(_OLD) in
#: asm-generic and x86 Linux, which with a 64-bit ``long`` carries a
#: 64-bit ``struct timespec``.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)

K = TypeVar("K", str, int)

_LISTEN_FORMS = "expected ADDR, ADDR:PORT, [V6ADDR]:PORT or V6ADDR"


class CollectorError(BpftapError):
    """A socket or file operation failed: ``bind udp socket on 0.0.0.0:4789: ...``."""

    def __init__(self, op: str, target: str, errno: int = 0, hint: str = "") -> None:
        self.op, self.target, self.errno, self.hint = op, target, errno, hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.op} on {self.target}"
        if self.errno:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            text += f": {os.strerror(self.errno)} ({name})"
        return f"{text}; {self.hint}" if self.hint else text


@dataclass
class CollectorStats:
    """Counters of one ``serve()`` run.

    ``per_vni`` counts frames written; ``per_sender`` counts every datagram
    received, keyed by the sender's IP address (without the port: VXLAN
    senders vary the source port per flow for ECMP entropy).
    """

    received: int = 0
    written: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    per_vni: dict[int, int] = field(default_factory=dict)
    per_sender: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    files: list[Path] = field(default_factory=list)


def _ip(host: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen address {text!r}: {host!r} is not an IP address; "
                         f"{_LISTEN_FORMS}") from None


def _port(port_text: str, text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"listen address {text!r}: port {port_text!r} is not 0..65535")
    return int(port_text)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``ADDR``, ``ADDR:PORT``, ``[V6ADDR]:PORT`` or ``V6ADDR`` into (addr, port).

    The port defaults to 4789 (VXLAN); 0 means an ephemeral port. Addresses
    must be IP literals (no host names), IPv6 ones may carry a ``%scope``.
    Raises ValueError with a message quoting the input on anything else.
    """
    s = text.strip()
    if not s:
        raise ValueError(f"empty listen address; {_LISTEN_FORMS}")
    port = vxlan.VXLAN_PORT
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep:
            raise ValueError(f"listen address {text!r}: missing ']'; {_LISTEN_FORMS}")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"listen address {text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], text)
        if _ip(host, text).version != 6:
            raise ValueError(f"listen address {text!r}: brackets are only for IPv6")
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
        port = _port(port_text, text)
    else:
        host = s
    return str(_ip(host, text)), port


def format_endpoint(host: str, port: int) -> str:
    """``1.2.3.4:80`` or ``[::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sender(addr: tuple[Any, ...]) -> tuple[str, int]:
    """(host, port) of a recvmsg address, with IPv4-mapped IPv6 shown as IPv4."""
    host, port = str(addr[0]), int(addr[1])
    if host.startswith("::ffff:"):
        mapped = ipaddress.IPv6Address(host.partition("%")[0]).ipv4_mapped
        if mapped is not None:
            host = str(mapped)
    return host, port


def _kernel_ts(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = (int(v) for v in _TIMESPEC.unpack_from(data))
            if sec >= 0 and 0 <= nsec < 1_000_000_000:
                return sec * 1_000_000_000 + nsec
    return None


def _bump(counts: dict[K, int], key: K) -> None:
    counts[key] = counts.get(key, 0) + 1


class Collector:
    """Receive VXLAN datagrams on ``addr:port`` and write inner frames to ``out``.

    ``vnis``, if given, is the set of VNIs to keep; others are dropped and
    counted as malformed ``"vni"``. Use ``bind()`` (or let ``serve()`` do it),
    then ``serve()`` once; ``port`` holds the bound port after ``bind()``
    (useful with port 0). Raises ValueError from the constructor if ``addr``
    is not an IP literal or ``port`` is out of range.
    """

    def __init__(
        self,
        addr: str,
        port: int,
        out: Path,
        rotate_bytes: int | None = None,
        vnis: Iterable[int] | None = None,
    ) -> None:
        self.addr = str(ipaddress.ip_address(addr))
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not 0..65535")
        self.port = port
        self.out = Path(out)
        self.rotate_bytes = rotate_bytes
        self.vnis = frozenset(vnis) if vnis is not None else None
        self.kernel_timestamps = False
        self.stats = CollectorStats()
        self._sock: socket.socket | None = None
        self._writer: PcapngWriter | None = None
        self._closed = False

    @property
    def address(self) -> str:
        """The listening endpoint as ``ADDR:PORT`` / ``[V6ADDR]:PORT``."""
        return format_endpoint(self.addr, self.port)

    def bind(self) -> None:
        """Bind the UDP socket, then create the first output file.

        Raises CollectorError naming the address when the socket cannot be
        created or bound (EADDRINUSE: another collector or a kernel vxlan
        device holds the port; EADDRNOTAVAIL: no local interface has the
        address), or naming the file when it cannot be created. Raises
        ValueError once the collector has been closed: it serves only once.
        """
        if self._sock is not None:
            return
        if self._closed:
            raise ValueError("collector already closed; make a new one")
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise CollectorError("create udp socket", self.address, exc.errno or 0) from exc
        try:
            with contextlib.suppress(OSError):  # best effort; capped at net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            if sys.platform == "linux":
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    self.kernel_timestamps = True
                except OSError:
                    self.kernel_timestamps = False
            info = socket.getaddrinfo(self.addr, self.port, family, socket.SOCK_DGRAM,
                                      0, socket.AI_NUMERICHOST)
            sock.bind(info[0][4])
            self.port = sock.getsockname()[1]
        except socket.gaierror as exc:  # e.g. an unknown %scope interface
            sock.close()
            raise CollectorError("bind udp socket", self.address, 0, exc.strerror or "") from exc
        except OSError as exc:
            sock.close()
            raise CollectorError("bind udp socket", self.address, exc.errno or 0,
                                 _BIND_HINTS.get(exc.errno or 0, "")) from exc
        try:
            self._writer = PcapngWriter(self.out, self.rotate_bytes)
        except OSError as exc:
            sock.close()
            raise CollectorError("create capture file", str(self.out), exc.errno or 0,
                                 "check that the directory exists and is writable") from exc
        self._sock = sock
        self.stats.files = self._writer.files
        self.stats.bytes_written = self._writer.bytes_written

    def serve(
        self,
        stop: threading.Event | None = None,
        max_packets: int | None = None,
        duration: float | None = None,
    ) -> CollectorStats:
        """Receive until ``stop`` is set, ``max_packets`` frames are written or
        ``duration`` seconds pass, whichever comes first; then close socket
        and file and return the stats. Reacts to ``stop`` within
        POLL_INTERVAL seconds.

        Raises CollectorError from ``bind()``, or if writing the capture fails
        (disk full, ...); malformed datagrams are counted, never raised.
        """
        self.bind()
        assert self._sock is not None
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while stop is None or not stop.is_set():
                if max_packets is not None and self.stats.written >= max_packets:
                    break
                timeout = POLL_INTERVAL
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        break
                self._sock.settimeout(timeout)
                try:
                    data, anc, flags, addr = self._sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
                except TimeoutError:
                    continue
                self._handle(data, anc, flags, addr)
        finally:
            self.close()
        return self.stats

    def _handle(self, data: bytes, anc: list[tuple[int, int, bytes]], flags: int,
                addr: tuple[Any, ...]) -> None:
        stats = self.stats
        stats.received += 1
        host, port = _sender(addr)
        _bump(stats.per_sender, host)
        if flags & socket.MSG_TRUNC:
            _bump(stats.malformed, "truncated")
            return
        try:
            vni, inner = vxlan.decode(data)
        except vxlan.DecapError as exc:
            _bump(stats.malformed, exc.reason)
            return
        if self.vnis is not None and vni not in self.vnis:
            _bump(stats.malformed, "vni")
            return
        ts_ns = _kernel_ts(anc) or time.time_ns()
        assert self._writer is not None
        try:
            self._writer.write(inner, ts_ns, f"vni={vni} from={format_endpoint(host, port)}")
        except OSError as exc:
            raise CollectorError("write capture file", str(self._writer.files[-1]),
                                 exc.errno or 0) from exc
        stats.written += 1
        stats.bytes_written = self._writer.bytes_written
        _bump(stats.per_vni, vni)

    def close(self) -> None:
        """Close the socket and the capture file; safe to call more than once."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._writer is not None:
            self._writer.close()
            self.stats.bytes_written = self._writer.bytes_written
            self._writer = None

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_BIND_HINTS = {
    _errno.EADDRINUSE: "another collector or a kernel vxlan device already uses this "
                       "port; stop it or choose another with --listen ADDR:PORT",
    _errno.EADDRNOTAVAIL: "no local interface has this address",
    _errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE",
}


def _counts(counts: dict[str, int] | dict[int, int]) -> str:
    if not counts:
        return "none"
    return "  ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def format_summary(stats: CollectorStats) -> str:
    """A short multi-line, human-readable summary of ``stats``."""
    per_vni = "  ".join(f"{k}={v}" for k, v in sorted(stats.per_vni.items())) or "none"
    files = "\n            ".join(str(p) for p in stats.files) or "none"
    return "\n".join([
        f"received:   {stats.received} datagrams, wrote {stats.written} frames "
        f"({stats.bytes_written} bytes of pcapng)",
        f"per VNI:    {per_vni}",
        f"per sender: {_counts(stats.per_sender)}",
        f"malformed:  {_counts(stats.malformed)}",
        f"files:      {files}",
    ])
