"""What a capture of decapsulated copies shows of a TCP flow: the sequence space each direction covered.

Reads a classic pcap (dumpcap -P) of Ethernet frames, possibly cut short
(snaplen): lengths come from the IP headers, not from the captured bytes.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

Endpoint = tuple[bytes, int]  # (address, port)


@dataclass
class Direction:
    """One direction of a TCP connection: its ISN and the [start, end) ranges of payload seen."""

    isn: int | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)  # relative to isn + 1, unwrapped past 4 GiB
    segments: int = 0

    def covered(self) -> list[tuple[int, int]]:
        """The payload ranges seen, merged: one range means no gap."""
        out: list[tuple[int, int]] = []
        for start, end in sorted(self.ranges):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        return out


def pcap_frames(path: Path) -> list[bytes]:
    """The frames of a classic pcap file, as captured."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off, frames = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from(order + "I", data, off + 8)[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def flows(path: Path) -> dict[tuple[Endpoint, Endpoint], Direction]:
    """Every TCP direction in the capture, keyed (source, destination); sequence numbers taken relative to the SYN."""
    return frame_flows(pcap_frames(path))


def frame_flows(frames: Iterable[bytes]) -> dict[tuple[Endpoint, Endpoint], Direction]:
    """Every TCP direction among `frames` (Ethernet), as `flows` finds them."""
    raw: dict[tuple[Endpoint, Endpoint], list[tuple[int, int, bool]]] = defaultdict(list)
    for f in frames:
        off, etype = 14, struct.unpack_from("!H", f, 12)[0]
        while etype in (0x8100, 0x88A8):
            etype, off = struct.unpack_from("!H", f, off + 2)[0], off + 4
        if etype == 0x0800 and f[off + 9] == 6:
            ihl, total = (f[off] & 0xF) * 4, struct.unpack_from("!H", f, off + 2)[0]
            src, dst, l4, l4_len = f[off + 12:off + 16], f[off + 16:off + 20], off + ihl, total - ihl
        elif etype == 0x86DD and f[off + 6] == 6:
            src, dst, l4 = f[off + 8:off + 24], f[off + 24:off + 40], off + 40
            l4_len = struct.unpack_from("!H", f, off + 4)[0]
        else:
            continue
        sport, dport, seq = struct.unpack_from("!HHI", f, l4)
        doff, flags = f[l4 + 12] >> 4, f[l4 + 13]
        raw[((src, sport), (dst, dport))].append((seq, l4_len - doff * 4, bool(flags & 0x02)))
    out = {}
    for key, segs in raw.items():
        d = Direction(segments=len(segs))
        d.isn = next((seq for seq, _, syn in segs if syn), None)
        if d.isn is not None:
            base = (d.isn + 1) & 0xFFFFFFFF
            data = [(seq, n) for seq, n, _ in segs if n]
            starts = _unwrap((seq - base) & 0xFFFFFFFF for seq, _ in data)
            d.ranges = [(start, start + n) for start, (_, n) in zip(starts, data, strict=True)]
        out[key] = d
    return out


def _unwrap(rels: Iterable[int]) -> Iterable[int]:
    """32-bit offsets in capture order as 64-bit ones: each the nearest to the furthest seen yet (a flow of
    5 Gbit/s passes 4 GiB in 7 s; copies arrive nearly in order)."""
    top = 0
    for rel in rels:
        x = rel + (top & ~0xFFFFFFFF)
        if x - top > 1 << 31:
            x -= 1 << 32
        elif top - x > 1 << 31:
            x += 1 << 32
        top = max(top, x)
        yield x
