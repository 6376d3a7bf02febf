"""`bpftap collect` in pipelines and on hostile captures (issue 16, defects 3 and 4): `--out -` streams
pcapng with the summary on stderr, `--read` and `--out` may not be one file, a capture cut anywhere
exits 0 or 1 with a message, never a traceback."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from bpftap.collector import cli
from bpftap.collector.pcapng import read_pcapng
from bpftap.tunnels import vxlan
from tests.unit.test_reassembly import DST4, SRC4, eth, parse, write_pcap

FRAMES = [eth(bytes(IP(src=SRC4, dst=DST4) / UDP(dport=4789) / Raw(vxlan.encode(7, bytes(range(40)) + bytes([i])))))
          for i in range(3)]


def _capture(tmp_path: Path) -> Path:
    path = tmp_path / "underlay.pcap"
    write_pcap(path, FRAMES)
    return path


def _collect(*argv: str, cwd: Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    streams = {} if kw else {"capture_output": True}
    return subprocess.run([sys.executable, "-m", "bpftap.cli", "collect", *argv], timeout=60, check=False,
                          cwd=cwd, **streams, **kw)  # type: ignore[call-overload]


@pytest.mark.parametrize("out", ["-", "/dev/stdout"])
def test_out_stdout_streams_pcapng_and_the_summary_goes_to_stderr(tmp_path: Path, out: str) -> None:
    done = _collect("--read", str(_capture(tmp_path)), "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "-").exists()
    (tmp_path / "got.pcapng").write_bytes(done.stdout)
    assert [frame[-1] for _, frame, _ in read_pcapng(tmp_path / "got.pcapng")] == [0, 1, 2]
    assert b"received:   3 datagrams, wrote 3 frames" in done.stderr


def test_out_dash_refuses_rotation(tmp_path: Path) -> None:
    err = io.StringIO()
    args = parse(["--read", str(_capture(tmp_path)), "--out", "-", "--rotate-mb", "1"])
    assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 2
    assert "--rotate-mb" in err.getvalue() and "stdout" in err.getvalue()


@pytest.mark.parametrize("how", ["same", "relative", "hardlink", "symlink"])
def test_read_and_out_may_not_be_one_file(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _capture(tmp_path)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = {"same": str(path), "relative": "./underlay.pcap", "hardlink": str(tmp_path / "link.pcap"),
           "symlink": str(tmp_path / "sym.pcap")}[how]
    if how == "hardlink":
        os.link(path, out)
    if how == "symlink":
        os.symlink(path, out)
    err = io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", out]), stdout=io.StringIO(), stderr=err) == 2
    assert "is the --read file" in err.getvalue()
    assert path.read_bytes() == before


def test_read_and_out_dash_into_the_same_file(tmp_path: Path) -> None:
    path = _capture(tmp_path)
    with open(path, "r+b") as same:  # stdout opened on the capture without truncating it
        done = _collect("--read", str(path), "--out", "-", cwd=tmp_path, stdout=same, stderr=subprocess.PIPE)
    assert done.returncode == 2 and b"is the --read file" in done.stderr


def test_a_record_cut_in_its_frame_exits_1(tmp_path: Path) -> None:
    path = _capture(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    out, err = io.StringIO(), io.StringIO()
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "o.pcapng")]), stdout=out,
                           stderr=err) == 1
    assert f"cut short at byte {len(data) - 5}" in err.getvalue()
    assert "wrote 2 frames" in out.getvalue()


def test_a_capture_cut_at_every_offset_exits_0_or_1_with_a_message(tmp_path: Path) -> None:
    data = _capture(tmp_path).read_bytes()
    cut = tmp_path / "cut.pcap"
    for end in range(len(data) + 1):
        cut.write_bytes(data[:end])
        err = io.StringIO()
        status = cli.run_collect(parse(["--read", str(cut), "--out", str(tmp_path / "o.pcapng")]),
                                 stdout=io.StringIO(), stderr=err)
        ends_a_record = end in {24 + sum(16 + len(f) for f in FRAMES[:n]) for n in range(len(FRAMES) + 1)}
        expected = 0 if ends_a_record else 2 if end < 24 else 1
        assert status == expected, (end, err.getvalue())
        if expected:
            assert "bpftap collect: error:" in err.getvalue(), end


def test_truncated_capture_headers_are_fine(tmp_path: Path) -> None:
    """A snaplen-cut record (caplen < origlen) is no cut file: tcpdump -s writes them."""
    path = tmp_path / "snap.pcap"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    frame = FRAMES[0]
    path.write_bytes(head + struct.pack("<IIII", 1, 0, len(frame), len(frame) + 100) + frame)
    assert cli.run_collect(parse(["--read", str(path), "--out", str(tmp_path / "o.pcapng")]),
                           stdout=io.StringIO(), stderr=io.StringIO()) == 0
