"""pcapng writer and reader: exact bytes, read-back, rotation, tshark validation."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpftap.collector.pcapng import PcapngWriter, packet_block, read_pcapng

TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
requires_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
requires_capinfos = pytest.mark.skipif(CAPINFOS is None, reason="capinfos not installed")

T0 = 1_700_000_000_123_456_789  # ns since the epoch


def frame(i: int, size: int = 60) -> bytes:
    """An Ethernet frame whose source MAC encodes ``i``."""
    dst = bytes.fromhex("020000000001")
    src = bytes.fromhex("0200000a") + i.to_bytes(2, "big")
    body = bytes((i + k) & 0xFF for k in range(size - 14))
    return dst + src + b"\x08\x00" + body


def mac(i: int) -> str:
    return "02:00:00:0a:" + ":".join(f"{b:02x}" for b in i.to_bytes(2, "big"))


def write_all(path: Path, packets: Sequence[tuple[int, bytes, str | None]],
              rotate_bytes: int | None = None) -> PcapngWriter:
    with PcapngWriter(path, rotate_bytes) as w:
        for ts, data, comment in packets:
            w.write(data, ts, comment)
    return w


def test_enhanced_packet_block_bytes() -> None:
    data = bytes(range(14))
    expected = (
        bytes.fromhex("06000000 3c000000")  # type EPB, total length 60
        + bytes.fromhex("00000000 01000000 02000000")  # interface 0, ts high, ts low
        + bytes.fromhex("0e000000 0e000000")  # captured, original length 14
        + data + b"\0\0"  # padded to 16
        + bytes.fromhex("0100 0200") + b"ab\0\0"  # opt_comment "ab"
        + bytes.fromhex("0000 0000")  # opt_endofopt
        + bytes.fromhex("3c000000")
    )
    assert packet_block(data, (1 << 32) | 2, "ab") == expected
    assert packet_block(data, 0)[4:8] == struct.pack("<I", 12 + 20 + 16)


def test_file_starts_with_shb_then_ethernet_ns_idb(tmp_path: Path) -> None:
    path = tmp_path / "a.pcapng"
    PcapngWriter(path).close()
    raw = path.read_bytes()
    shb_len = struct.unpack_from("<I", raw, 4)[0]
    assert raw[:4] == b"\x0a\x0d\x0d\x0a"
    assert raw[8:12] == b"\x4d\x3c\x2b\x1a"  # little-endian byte-order magic
    assert struct.unpack_from("<HHq", raw, 12) == (1, 0, -1)
    idb = raw[shb_len:]
    assert struct.unpack_from("<IIHHI", idb) == (1, len(idb), 1, 0, 0)
    assert b"\x02\x00\x06\x00bpftap\0\0" in idb  # if_name
    assert b"\x09\x00\x01\x00\x09\0\0\0" in idb  # if_tsresol = 10^-9
    assert read_pcapng(path) == []


def test_write_then_read_back(tmp_path: Path) -> None:
    packets = [(T0 + i, frame(i, 60 + i), f"vni={i} from=127.0.0.1:{4000 + i}" if i % 2 else None)
               for i in range(7)]
    w = write_all(tmp_path / "a.pcapng", packets)
    assert w.files == [tmp_path / "a.pcapng"]
    assert w.written == 7
    assert w.bytes_written == (tmp_path / "a.pcapng").stat().st_size
    assert read_pcapng(tmp_path / "a.pcapng") == packets


def test_unicode_comment_and_jumbo_frame(tmp_path: Path) -> None:
    packets = [(T0, frame(1, 9000), "vni=7 from=[::1]:5 – ünïcode")]  # noqa: RUF001 - not ASCII, on purpose
    write_all(tmp_path / "a.pcapng", packets)
    assert read_pcapng(tmp_path / "a.pcapng") == packets


def test_flushed_after_each_write(tmp_path: Path) -> None:
    path = tmp_path / "a.pcapng"
    w = PcapngWriter(path)
    try:
        w.write(frame(1), T0, "first")
        assert read_pcapng(path) == [(T0, frame(1), "first")]  # readable while open
    finally:
        w.close()


def test_rotation_makes_complete_files(tmp_path: Path) -> None:
    packets = [(T0 + i, frame(i, 100), f"n={i}") for i in range(20)]
    w = write_all(tmp_path / "cap.pcapng", packets, rotate_bytes=1000)
    names = [p.name for p in w.files]
    assert names[:3] == ["cap.pcapng", "cap-0001.pcapng", "cap-0002.pcapng"]
    assert len(names) > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    got = []
    for p in w.files:
        assert p.stat().st_size <= 1000
        part = read_pcapng(p)
        assert part, f"{p.name} holds no packet"
        got += part
    assert got == packets
    assert w.written == 20
    assert w.bytes_written == sum(p.stat().st_size for p in w.files)


def test_rotation_gives_an_oversized_packet_its_own_file(tmp_path: Path) -> None:
    packets = [(T0, frame(0, 60), None), (T0 + 1, frame(1, 2000), None), (T0 + 2, frame(2), None)]
    w = write_all(tmp_path / "big", packets, rotate_bytes=500)
    assert [p.name for p in w.files] == ["big", "big-0001", "big-0002"]
    assert [read_pcapng(p) for p in w.files] == [[pkt] for pkt in packets]


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotate_bytes"):
        PcapngWriter(tmp_path / "a", rotate_bytes=0)
    with pytest.raises(FileNotFoundError):
        PcapngWriter(tmp_path / "missing-dir" / "a.pcapng")
    w = PcapngWriter(tmp_path / "a")
    with pytest.raises(ValueError, match="64 bits"):
        w.write(frame(1), -1)
    with pytest.raises(ValueError, match="comment"):
        w.write(frame(1), T0, "x" * 70000)
    w.close()
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(frame(1), T0)


def test_reader_reads_microsecond_and_big_endian_files(tmp_path: Path) -> None:
    def block(fmt: str, btype: int, body: bytes) -> bytes:
        return struct.pack(fmt + "II", btype, 12 + len(body)) + body + struct.pack(
            fmt + "I", 12 + len(body))

    data = frame(3)
    for fmt in "<>":
        raw = (block(fmt, 0x0A0D0D0A, struct.pack(fmt + "IHHq", 0x1A2B3C4D, 1, 0, -1))
               + block(fmt, 1, struct.pack(fmt + "HHI", 1, 0, 0))  # no if_tsresol: microseconds
               + block(fmt, 6, struct.pack(fmt + "IIIII", 0, 0, 1_500_000, 60, 60) + data))
        path = tmp_path / f"x{fmt == '>'}.pcapng"
        path.write_bytes(raw)
        assert read_pcapng(path) == [(1_500_000_000, data, None)]


@pytest.mark.parametrize(
    ("description", "mutate", "message"),
    [
        ("empty file", lambda raw: b"", "not pcapng"),
        ("pcap, not pcapng", lambda raw: bytes.fromhex("d4c3b2a1") + raw[4:], "not pcapng"),
        ("truncated", lambda raw: raw[:-6], "truncated"),
        ("bad byte-order magic", lambda raw: raw[:8] + b"abcd" + raw[12:], "byte-order magic"),
        ("block length not /4", lambda raw: raw[:4] + b"\x1d" + raw[5:], "bad block length"),
        ("trailer mismatch", lambda raw: raw[:-1] + b"\x7f", "trailing length"),
    ],
)
def test_reader_rejects_malformed(
    tmp_path: Path, description: str, mutate: Callable[[bytes], bytes], message: str
) -> None:
    path = tmp_path / "a.pcapng"
    write_all(path, [(T0, frame(1), "c")])
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_pcapng(path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
def test_reader_fuzz_only_value_error(
    tmp_path: Path, cut: int, flips: list[tuple[int, int]]
) -> None:
    path = tmp_path / "fuzz.pcapng"
    write_all(path, [(T0, frame(1), "abc"), (T0 + 1, frame(2, 80), None)])
    raw = bytearray(path.read_bytes())
    for pos, mask in flips:
        if pos < len(raw):
            raw[pos] ^= mask
    path.write_bytes(bytes(raw[: len(raw) - cut]))
    with contextlib.suppress(ValueError):
        read_pcapng(path)


@requires_tshark
def test_tshark_dissects_every_packet_and_comment(tmp_path: Path) -> None:
    packets: list[tuple[int, bytes, str | None]] = [
        (T0 + i * 1000, frame(i, 64 + i), f"vni={40 + i} from=127.0.0.1:{5000 + i}")
        for i in range(5)
    ]
    packets.append((T0 + 9999, frame(9), None))
    write_all(tmp_path / "t.pcapng", packets)
    out = subprocess.run(
        [TSHARK or "tshark", "-n", "-r", str(tmp_path / "t.pcapng"), "-T", "fields",
         "-E", "separator=|", "-e", "frame.comment", "-e", "eth.src", "-e", "frame.len",
         "-e", "frame.time_epoch"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()
    assert len(out) == len(packets)
    for line, (ts, data, comment) in zip(out, packets, strict=True):
        got_comment, src, length, epoch = line.split("|")
        assert got_comment == (comment or "")
        assert src == mac(int.from_bytes(data[10:12], "big"))
        assert int(length) == len(data)
        assert epoch.replace(".", "").lstrip("0") == str(ts)  # nanosecond precision kept


@requires_tshark
def test_tshark_reads_every_rotated_file(tmp_path: Path) -> None:
    packets = [(T0 + i, frame(i, 200), f"n={i}") for i in range(12)]
    w = write_all(tmp_path / "r.pcapng", packets, rotate_bytes=1200)
    assert len(w.files) > 2
    comments: list[str] = []
    for p in w.files:
        comments += subprocess.run(
            [TSHARK or "tshark", "-n", "-r", str(p), "-T", "fields", "-e", "frame.comment"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.splitlines()
    assert comments == [c for _, _, c in packets]


@requires_capinfos
def test_capinfos_sees_ethernet_nanosecond_capture(tmp_path: Path) -> None:
    write_all(tmp_path / "c.pcapng", [(T0 + i, frame(i), None) for i in range(3)])
    info = subprocess.run(
        [CAPINFOS or "capinfos", "-M", "-t", "-E", "-c", "-a", str(tmp_path / "c.pcapng")],
        capture_output=True, text=True, timeout=30, check=True, env={**os.environ, "TZ": "UTC"},
    ).stdout
    assert "File type:           pcapng" in info
    assert "File encapsulation:  ether" in info
    assert "Number of packets:   3" in info
    assert "2023-11-14 22:13:20.123456789" in info  # nanosecond resolution honoured
