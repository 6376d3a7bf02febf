"""The collector's sockets: UDP for VXLAN and GENEVE, raw IP (protocol 47) for GRE and ERSPAN.

A raw socket sees every GRE packet addressed to this host, whatever its
source: there is no port to tell bpftap's copies from other GRE traffic,
so the decoders (which refuse what they do not understand) do the sorting.
An AF_INET raw socket reads the IPv4 header too; an AF_INET6 one reads
from the GRE header on. A listener on ``::`` also opens an IPv4 raw socket
on ``0.0.0.0``: UDP sockets on ``::`` take IPv4 through mapped addresses,
raw IPv6 sockets do not.

``--interface`` replaces them all with one packet socket (AF_PACKET) that
reads the interface's frames before the IP layer, fragments and all
(collector.underlay does the rest); a classic BPF filter in the kernel
keeps only what can be tunnel traffic.

Every socket asks for kernel receive timestamps (SO_TIMESTAMPNS) and a
4 MiB receive buffer (capped at net.core.rmem_max): the kernel's socket
buffer is the bounded queue in front of the collector.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import ipaddress
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from bpftap.errors import BpftapError
from bpftap.tunnels import vxlan
from bpftap.tunnels.common import IPPROTO_GRE

RCVBUF_BYTES = 4 << 20
#: Python's socket module does not export it; 35 is SO_TIMESTAMPNS(_OLD) in
#: asm-generic and x86 Linux, which with a 64-bit ``long`` carries a
#: 64-bit ``struct timespec``.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
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

    The port (VXLAN's) defaults to 4789; 0 means an ephemeral port.
    Addresses must be IP literals (no host names), IPv6 ones may carry a
    ``%scope``. Raises ValueError with a message quoting the input on
    anything else.
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


def sender(addr: tuple[Any, ...]) -> tuple[str, int]:
    """(host, port) of a recvmsg address, with IPv4-mapped IPv6 shown as IPv4; port 0 for raw sockets."""
    host, port = str(addr[0]), int(addr[1]) if len(addr) > 1 else 0
    if host.startswith("::ffff:"):
        mapped = ipaddress.IPv6Address(host.partition("%")[0]).ipv4_mapped
        if mapped is not None:
            host = str(mapped)
    return host, port


def kernel_ts(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The SO_TIMESTAMPNS receive time in ns since the epoch, if the kernel gave one."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = (int(v) for v in _TIMESPEC.unpack_from(data))
            if sec >= 0 and 0 <= nsec < 1_000_000_000:
                return sec * 1_000_000_000 + nsec
    return None


@dataclass
class Listener:
    """One open socket: `kind` "vxlan" or "geneve" (UDP), "gre" (raw, every GRE-based type)
    or "capture" (a packet socket on the interface `addr`, family 0)."""

    kind: str
    family: int
    sock: socket.socket
    addr: str
    port: int = 0

    def describe(self) -> str:
        if self.kind == "gre":
            return f"ip proto {IPPROTO_GRE} on {self.addr}"
        if self.kind == "capture":
            return f"every frame received on {self.addr}"
        return f"udp {format_endpoint(self.addr, self.port)}"


_BIND_HINTS = {
    _errno.EADDRINUSE: "another collector or a kernel vxlan/geneve device already uses this "
                       "port; stop it or choose another (--listen ADDR:PORT, --geneve-port)",
    _errno.EADDRNOTAVAIL: "no local interface has this address",
    _errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE",
    _errno.EPERM: "raw sockets (GRE, ERSPAN) need CAP_NET_RAW; run as root or leave them out with --tunnel",
}


def _prepare(sock: socket.socket) -> bool:
    """Buffer size and receive timestamps; returns whether the kernel stamps packets."""
    with contextlib.suppress(OSError):  # best effort; capped at net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    return _prepare_timestamps(sock)


def _prepare_timestamps(sock: socket.socket) -> bool:
    """Ask for SO_TIMESTAMPNS; returns whether the kernel stamps packets."""
    if sys.platform != "linux":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def open_socket(kind: str, addr: str, port: int = 0) -> tuple[Listener, bool]:
    """Create and bind one listener: UDP on addr:port, or a raw GRE socket on addr.

    Returns the listener (its `port` the bound one) and whether the kernel
    timestamps its packets. Raises CollectorError naming the endpoint when
    the socket cannot be created or bound; the hint says why (EADDRINUSE,
    EADDRNOTAVAIL, EACCES, EPERM for raw sockets without CAP_NET_RAW).
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    raw = kind == "gre"
    what = "raw ip socket" if raw else "udp socket"
    target = addr if raw else format_endpoint(addr, port)
    try:
        sock = socket.socket(family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM, IPPROTO_GRE if raw else 0)
    except OSError as exc:
        raise CollectorError(f"create {what}", target, exc.errno or 0,
                             _BIND_HINTS.get(exc.errno or 0, "")) from exc
    try:
        stamps = _prepare(sock)
        if family == socket.AF_INET6 and not raw:
            # the segments of bpftap's GSO copies over IPv6 carry a zero UDP checksum (RFC 6935)
            sock.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
        # resolve as UDP: getaddrinfo knows no ports for raw sockets, the address is the same
        info = socket.getaddrinfo(addr, 0 if raw else port, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
        sock.bind(info[0][4])
        bound = 0 if raw else int(sock.getsockname()[1])
    except socket.gaierror as exc:  # e.g. an unknown %scope interface
        sock.close()
        raise CollectorError(f"bind {what}", target, 0, exc.strerror or "") from exc
    except OSError as exc:
        sock.close()
        raise CollectorError(f"bind {what}", target, exc.errno or 0, _BIND_HINTS.get(exc.errno or 0, "")) from exc
    sock.setblocking(False)
    return Listener(kind, 6 if family == socket.AF_INET6 else 4, sock, addr, bound), stamps


ETH_P_ALL = 0x0003
UDP_NO_CHECK6_RX = 102
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
#: a capture socket's buffer: frames of a burst of fragments wait here, not in Python
CAPTURE_RCVBUF_BYTES = 32 << 20
#: run by the kernel (classic BPF, compiled by libpcap) on every frame of the interface before it is
#: queued: IPv4 UDP and GRE (fragments included: every one carries the protocol), IPv6 whose first
#: header is UDP, GRE, a fragment header or an extension header that may lead to them, and
#: 802.1Q/802.1ad-tagged frames (sorted in Python)
CAPTURE_FILTER = ("ip proto 17 or ip proto 47 or (ip6 and (ip6[6] == 17 or ip6[6] == 47 or ip6[6] == 44 "
                  "or ip6[6] == 0 or ip6[6] == 43 or ip6[6] == 60)) or ether proto 0x8100 or ether proto 0x88a8")


def _attach_filter(sock: socket.socket) -> None:
    """Attach CAPTURE_FILTER (SO_ATTACH_FILTER copies the program; the buffer may go afterwards)."""
    from bpftap.filter.pcap import compile_filter

    insns = compile_filter(CAPTURE_FILTER).insns
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in insns))
    fprog = struct.pack("HL", len(insns), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_capture(interface: str) -> tuple[Listener, bool]:
    """Open a packet socket (AF_PACKET) reading every frame `interface` receives, filtered as CAPTURE_FILTER.

    The interface must be in the caller's network namespace. Returns the
    listener (kind "capture") and whether the kernel timestamps frames.
    Raises CollectorError naming the interface: ENODEV (no such interface
    here), EPERM (needs CAP_NET_RAW), ...
    """
    hints = {_errno.ENODEV: "no such interface in this network namespace; 'ip link' lists them",
             _errno.EPERM: "packet sockets need CAP_NET_RAW; run as root"}
    try:
        # protocol 0: nothing is queued before the filter is attached and the socket bound
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise CollectorError("create packet socket", interface, exc.errno or 0,
                             hints.get(exc.errno or 0, "")) from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_RCVBUF_BYTES)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_RCVBUF_BYTES)
        stamps = _prepare_timestamps(sock)
        _attach_filter(sock)
        sock.bind((interface, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise CollectorError("capture", interface, exc.errno or 0, hints.get(exc.errno or 0, "")) from exc
    sock.setblocking(False)
    return Listener("capture", 0, sock, interface), stamps


def capture_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped for a packet socket (buffer full) since the last call (PACKET_STATISTICS)."""
    _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return int(drops)
