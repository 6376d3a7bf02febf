"""Small pcapng writer with size-based rotation, and a strict reader for tests.

Every file is a complete section: a Section Header Block, one Interface
Description Block (LINKTYPE_ETHERNET, snaplen 0, ``if_name`` "bpftap",
``if_tsresol`` 9 = nanoseconds) and then Enhanced Packet Blocks, little-endian,
each block padded to 32 bits. A packet comment becomes an ``opt_comment``
option, a direction an ``epb_flags`` option. The file is flushed after every block so a killed collector leaves a
readable capture (at worst missing the packet being written).

Rotation: when the next packet would push the current file past
``rotate_bytes``, the file is closed and ``<stem>-0001<suffix>``,
``<stem>-0002<suffix>``, ... follow; the first file keeps the given name. A
file always receives at least one packet, so a packet larger than
``rotate_bytes`` gets a file of its own instead of looping. Existing files of
the same names are overwritten, as ``tcpdump -w`` does.
"""

from __future__ import annotations

import errno
import os
import struct
from io import FileIO
from pathlib import Path
from types import TracebackType
from typing import Final

from bpftap import __version__

LINKTYPE_ETHERNET: Final = 1
BT_SHB: Final = 0x0A0D0D0A
BT_IDB: Final = 0x00000001
BT_EPB: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
EPB_FLAGS: Final = 2
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_TSRESOL: Final = 9
IF_NAME_VALUE: Final = "bpftap"
STDOUT: Final = Path("-")  # the path that means standard output

_U64_MAX: Final = (1 << 64) - 1
_OPT_MAX: Final = 0xFFFF


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    """Encode options followed by opt_endofopt; empty bytes if there are none."""
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(v)) + _pad4(v) for code, v in opts)
    return out + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _file_header() -> bytes:
    """SHB + IDB that open every file."""
    shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(
        [(SHB_USERAPPL, f"bpftap {__version__}".encode())]
    )
    idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0) + _options(
        [(IF_NAME, IF_NAME_VALUE.encode()), (IF_TSRESOL, bytes([9]))]
    )
    return _block(BT_SHB, shb) + _block(BT_IDB, idb)


def packet_block(frame: bytes, ts_ns: int, comment: str | None = None, flags: int | None = None) -> bytes:
    """Encode one Enhanced Packet Block for interface 0 (nanosecond timestamps).

    ``flags`` becomes the ``epb_flags`` option (bits 0-1: 1 inbound,
    2 outbound; Wireshark's ``frame.packet_flags_direction``). Raises
    ValueError if ``ts_ns`` does not fit 0..2**64-1, the UTF-8 comment is
    longer than 65535 bytes or ``flags`` does not fit 32 bits.
    """
    if not 0 <= ts_ns <= _U64_MAX:
        raise ValueError(f"timestamp {ts_ns} ns does not fit 64 bits")
    opts: list[tuple[int, bytes]] = []
    if comment is not None:
        raw = comment.encode()
        if len(raw) > _OPT_MAX:
            raise ValueError(f"comment of {len(raw)} bytes exceeds {_OPT_MAX}")
        opts.append((OPT_COMMENT, raw))
    if flags is not None:
        if not 0 <= flags <= 0xFFFFFFFF:
            raise ValueError(f"epb_flags {flags} does not fit 32 bits")
        opts.append((EPB_FLAGS, struct.pack("<I", flags)))
    head = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(frame), len(frame))
    return _block(BT_EPB, head + _pad4(bytes(frame)) + _options(opts))


class PcapngWriter:
    """Write Ethernet frames to ``path`` (and rotated siblings) as pcapng; ``path`` "-" is stdout.

    ``files`` lists every file written, in order; ``written`` counts packets
    and ``bytes_written`` counts bytes over all files. The first file is
    created (and any existing one truncated) in the constructor, so an
    unwritable path fails early: raises OSError (PermissionError,
    FileNotFoundError, IsADirectoryError, ...). Raises ValueError if
    ``rotate_bytes`` is given and not positive.
    """

    def __init__(self, path: Path, rotate_bytes: int | None = None) -> None:
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError(f"rotate_bytes must be positive, got {rotate_bytes}")
        if rotate_bytes is not None and Path(path) == STDOUT:
            raise ValueError("stdout cannot be rotated")
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.files: list[Path] = []
        self.written = 0
        self.bytes_written = 0
        self._fh: FileIO | None = None
        self._size = 0
        self._packets_in_file = 0
        self._open_next()

    def _name(self, index: int) -> Path:
        if index == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{index:04d}{self.path.suffix}")

    def _open_next(self) -> None:
        name = self._name(len(self.files))
        # Unbuffered: every block reaches the kernel at once (the "flush after
        # each write"), and close() has no buffer left to fail on.
        # for stdout, a duplicate of fd 1, so close() leaves the process's stdout open
        fh = open(os.dup(1) if name == STDOUT else name, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self.files.append(name)
        self._size = self._packets_in_file = 0
        self._fh = fh
        try:
            self._emit(_file_header())
        except OSError:
            self.close()
            raise

    def _emit(self, data: bytes) -> None:
        assert self._fh is not None
        view = memoryview(data)
        while view:
            done = self._fh.write(view)
            if not done:  # None/0 only on a non-blocking or broken fd: don't spin
                raise OSError(errno.EIO, f"short write to {self.files[-1]}")
            view = view[done:]
        self._size += len(data)
        self.bytes_written += len(data)

    def write(self, frame: bytes, ts_ns: int, comment: str | None = None, flags: int | None = None) -> None:
        """Append one frame with its wall-clock timestamp in ns since the epoch.

        Raises ValueError after close() or for an unencodable timestamp or
        comment (see ``packet_block``); OSError if the disk write fails.
        """
        if self._fh is None:
            raise ValueError("write to a closed PcapngWriter")
        block = packet_block(frame, ts_ns, comment, flags)
        if (
            self.rotate_bytes is not None
            and self._packets_in_file > 0
            and self._size + len(block) > self.rotate_bytes
        ):
            self._fh.close()
            self._fh = None
            self._open_next()
        self._emit(block)
        self._packets_in_file += 1
        self.written += 1

    def close(self) -> None:
        """Close the current file; safe to call more than once."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ts_to_ns(ts: int, tsresol: int) -> int:
    if tsresol & 0x80:
        return (ts * 1_000_000_000) >> (tsresol & 0x7F)
    exp = tsresol
    return int(ts * 10 ** (9 - exp) if exp <= 9 else ts // 10 ** (exp - 9))


def _parse_options(data: bytes, endian: str, where: str) -> dict[int, bytes]:
    """First value of each option code; raises ValueError on overrun."""
    found: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        code, length = struct.unpack_from(endian + "HH", data, pos)
        if code == OPT_ENDOFOPT:
            break
        end = pos + 4 + length
        if end > len(data):
            raise ValueError(f"{where}: option {code} of {length} bytes overruns its block")
        found.setdefault(code, data[pos + 4 : end])
        pos = end + (-length % 4)
    return found


def read_pcapng(path: Path) -> list[tuple[int, bytes, str | None]]:
    """Read every Enhanced Packet Block of a pcapng file.

    Returns ``(ts_ns, frame, comment)`` per packet, honouring each interface's
    ``if_tsresol`` and either byte order. Other block types are skipped.
    Raises ValueError naming the offset if the file is not pcapng or is
    truncated or malformed (bad lengths, unknown interface, option overrun,
    comment not UTF-8); OSError if it cannot be read.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path}: not pcapng (empty file)")
    packets: list[tuple[int, bytes, str | None]] = []
    endian: str | None = None
    tsresols: list[int] = []
    off = 0
    while off < len(data):
        where = f"{path}: block at offset {off}"
        if len(data) - off < 12:
            raise ValueError(f"{where}: truncated block header")
        if data[off : off + 4] == struct.pack("<I", BT_SHB):
            bom = data[off + 8 : off + 12]
            if bom == struct.pack("<I", BYTE_ORDER_MAGIC):
                endian = "<"
            elif bom == struct.pack(">I", BYTE_ORDER_MAGIC):
                endian = ">"
            else:
                raise ValueError(f"{where}: bad byte-order magic {bom.hex()}")
            tsresols = []
        elif endian is None:
            raise ValueError(f"{where}: not pcapng (no Section Header Block first)")
        btype, total = struct.unpack_from(endian + "II", data, off)
        if total < 12 or total % 4:
            raise ValueError(f"{where}: bad block length {total}")
        if off + total > len(data):
            raise ValueError(f"{where}: truncated (length {total}, {len(data) - off} left)")
        (trailer,) = struct.unpack_from(endian + "I", data, off + total - 4)
        if trailer != total:
            raise ValueError(f"{where}: trailing length {trailer} != {total}")
        body = data[off + 8 : off + total - 4]
        if btype == BT_SHB:
            if len(body) < 16:
                raise ValueError(f"{where}: Section Header Block too short")
            major = struct.unpack_from(endian + "H", body, 4)[0]
            if major != 1:
                raise ValueError(f"{where}: unsupported pcapng major version {major}")
        elif btype == BT_IDB:
            if len(body) < 8:
                raise ValueError(f"{where}: Interface Description Block too short")
            opts = _parse_options(body[8:], endian, where)
            resol = opts.get(IF_TSRESOL, bytes([6]))
            tsresols.append(resol[0] if resol else 6)
        elif btype == BT_EPB:
            packets.append(_read_epb(body, endian, tsresols, where))
        off += total
    return packets


def _read_epb(
    body: bytes, endian: str, tsresols: list[int], where: str
) -> tuple[int, bytes, str | None]:
    if len(body) < 20:
        raise ValueError(f"{where}: Enhanced Packet Block too short")
    iface, ts_hi, ts_lo, caplen, _origlen = struct.unpack_from(endian + "IIIII", body)
    if iface >= len(tsresols):
        raise ValueError(f"{where}: packet for undeclared interface {iface}")
    end = 20 + caplen
    if end > len(body):
        raise ValueError(f"{where}: captured length {caplen} overruns its block")
    opts = _parse_options(body[end + (-caplen % 4) :], endian, where)
    comment = None
    if OPT_COMMENT in opts:
        try:
            comment = opts[OPT_COMMENT].decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: comment is not UTF-8") from exc
    return _ts_to_ns((ts_hi << 32) | ts_lo, tsresols[iface]), body[20:end], comment
