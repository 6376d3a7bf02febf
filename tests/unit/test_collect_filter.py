"""`bpftap collect --filter EXPR` (issue 15 item 4): only the inner frames libpcap's matcher accepts are written.

``captures/test_collect_filter/traffic.pcap`` is a real capture of a VXLAN
underlay, made by ``record.sh`` beside it (two namespaces, the kernel's
VXLAN devices, pings v4 and v6, DNS over UDP v4/v6 and TCP, a refused TCP
connection, a UDP datagram to a closed port and the ICMP error back). Each
expression's expected frames are picked from the unfiltered output by a
predicate written here from the headers' bytes, not by libpcap. The socket
mode is tested on loopback (127.0.0.1 only), --interface in
tests/integration/test_collector_capture.py.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bpftap.collector import cli
from bpftap.collector.pcapng import read_pcapng
from bpftap.collector.server import Collector
from bpftap.filter.pcap import compile_filter
from bpftap.tunnels import geneve
from bpftap.tunnels.vxlan import encode

from .test_collector import serving, wait_for

CAPTURE = Path(__file__).parent / "captures" / "test_collect_filter" / "traffic.pcap"
FRAMES_IN_CAPTURE = 40


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bpftap")
    cli.register(parser.add_subparsers())
    return parser.parse_args(["collect", *argv])


def headers(frame: bytes) -> dict[str, int]:
    """ethertype, and for IPv4/IPv6: family, proto (the fixed header's), sport/dport and tcp_flags where there are."""
    etype = int.from_bytes(frame[12:14], "big")
    out = {"etype": etype}
    if etype == 0x0800:
        out.update(family=4, proto=frame[23])
        l4 = frame[14 + (frame[14] & 15) * 4:]
    elif etype == 0x86DD:
        out.update(family=6, proto=frame[20])
        l4 = frame[54:]
    else:
        return out
    if out["proto"] in (6, 17):
        out["sport"], out["dport"] = struct.unpack("!HH", l4[:4])
    if out["proto"] == 6:
        out["tcp_flags"] = l4[13]
    return out


def _port(n: int) -> Callable[[dict[str, int]], bool]:
    return lambda h: n in (h.get("sport"), h.get("dport"))


# expression, what it means written by hand, how many of the capture's frames it keeps
CASES: list[tuple[str, Callable[[dict[str, int]], bool], int]] = [
    ("port 53", _port(53), 16),  # 6 DNS over UDP, 10 segments of the TCP connection
    ("udp port 53", lambda h: h.get("proto") == 17 and _port(53)(h), 6),
    ("ip6 and udp", lambda h: h.get("family") == 6 and h.get("proto") == 17, 2),
    ("icmp", lambda h: h.get("family") == 4 and h.get("proto") == 1, 7),  # pings and the port unreachable
    ("arp", lambda h: h["etype"] == 0x0806, 2),
    ("tcp[tcpflags] & tcp-syn != 0", lambda h: bool(h.get("tcp_flags", 0) & 2), 3),
    ("not ip and not ip6", lambda h: h["etype"] not in (0x0800, 0x86DD), 2),
    ("udp port 9", lambda h: False, 0),
]


@pytest.fixture(scope="module")
def all_frames(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("all") / "all.pcapng"
    assert cli.run_collect(parse(["--read", str(CAPTURE), "--out", str(out)]), stdout=io.StringIO(),
                           stderr=io.StringIO()) == 0
    frames = [f for _, f, _ in read_pcapng(out)]
    assert len(frames) == FRAMES_IN_CAPTURE
    return frames


@pytest.mark.parametrize("expression,keep,count", CASES, ids=[c[0] for c in CASES])
def test_read_keeps_what_the_expression_matches(expression: str, keep: Callable[[dict[str, int]], bool], count: int,
                                                all_frames: list[bytes], tmp_path: Path) -> None:
    want = [f for f in all_frames if keep(headers(f))]
    assert len(want) == count  # the predicate and the capture agree with the comment
    out, err = io.StringIO(), io.StringIO()
    args = parse(["--read", str(CAPTURE), "--out", str(tmp_path / "f.pcapng"), "--filter", expression])
    assert cli.run_collect(args, stdout=out, stderr=err) == 0, err.getvalue()
    assert [f for _, f, _ in read_pcapng(tmp_path / "f.pcapng")] == want
    summary = out.getvalue()
    assert f"received:   {FRAMES_IN_CAPTURE} datagrams, wrote {count} frames" in summary
    assert f"filtered:   {FRAMES_IN_CAPTURE - count} frames did not match --filter {expression!r}" in summary
    assert f"frames matching {expression!r}" in err.getvalue()


def test_no_filter_no_filtered_line(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cli.run_collect(parse(["--read", str(CAPTURE), "--out", str(tmp_path / "a.pcapng")]), stdout=out,
                           stderr=io.StringIO()) == 0
    assert "filtered:" not in out.getvalue()


def test_filter_on_reassembled_fragments(tmp_path: Path) -> None:
    """The kernel's fragments (test_reassembly's capture): the filter sees each whole inner frame."""
    out = io.StringIO()
    capture = Path(__file__).parent / "captures" / "test_reassembly" / "kernel_fragments.pcap"
    args = parse(["--read", str(capture), "--out", str(tmp_path / "k.pcapng"), "--filter", "udp src port 1001"])
    assert cli.run_collect(args, stdout=out, stderr=io.StringIO()) == 0
    got = [f for _, f, _ in read_pcapng(tmp_path / "k.pcapng")]
    assert [len(f) for f in got] == [3000, 3000]  # frame 1 of each family, cut in 3 fragments each on the wire
    assert "wrote 2 frames" in out.getvalue() and "filtered:   4 frames" in out.getvalue()


@pytest.mark.parametrize("expression,message", [
    ("udp srcc port 53", "syntax error"),
    ("port 99999", "port 99999"),
    ("tcp and", "syntax error"),
    ("ether host zz:zz", "unknown ether host"),
])
@pytest.mark.parametrize("source", [["--read", str(CAPTURE)], ["--interface", "no-such-if0"], []])
def test_a_bad_expression_is_exit_2_before_anything_is_opened(expression: str, message: str, source: list[str],
                                                              tmp_path: Path) -> None:
    err = io.StringIO()
    out = tmp_path / "never.pcapng"
    args = parse([*source, "--listen", "127.0.0.1:0", "--tunnel", "vxlan", "--out", str(out), "--filter", expression])
    assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 2
    text = err.getvalue()
    assert text.startswith("bpftap collect: error: --filter: ") and message in text, text
    assert f"(in {expression!r})" in text and "Traceback" not in text
    assert not out.exists()


def test_sockets_filter_inner_frames(all_frames: list[bytes], tmp_path: Path) -> None:
    """VXLAN datagrams on loopback carrying the capture's inner frames; 'icmp or arp' keeps 9 of 40."""
    out = tmp_path / "s.pcapng"
    collector = Collector("127.0.0.1", 0, out, tunnels=("vxlan",), inner_filter=compile_filter("icmp or arp"))
    with serving(collector) as result:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for frame in all_frames:
                s.sendto(encode(42, frame), ("127.0.0.1", collector.port))
        wait_for(lambda: collector.stats.received == len(all_frames))
    stats = result["stats"]
    want = [f for f in all_frames
            if headers(f)["etype"] == 0x0806 or (headers(f).get("proto") == 1 and headers(f)["family"] == 4)]
    assert [f for _, f, _ in read_pcapng(out)] == want and len(want) == 9
    assert (stats.written, stats.filtered, stats.malformed) == (9, 31, {})  # type: ignore[attr-defined]
    assert stats.received == stats.written + stats.filtered  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark missing (make test installs it)")
def test_out_dash_into_tshark(tmp_path: Path) -> None:
    """`bpftap collect --read traffic.pcap --filter 'port 53' --out - | tshark -r -`: DNS only, every query."""
    collect = subprocess.Popen([sys.executable, "-m", "bpftap.cli", "collect", "--read", str(CAPTURE),
                                "--filter", "port 53", "--out", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tmp_path)
    assert collect.stdout is not None
    tshark = subprocess.run(["tshark", "-r", "-", "-T", "fields", "-e", "udp.port", "-e", "tcp.port",
                             "-e", "dns.qry.name"], stdin=collect.stdout, capture_output=True, text=True, timeout=60,
                            check=False)
    collect.stdout.close()
    _, err = collect.communicate(timeout=60)
    assert collect.returncode == 0 and tshark.returncode == 0, (err, tshark.stderr)
    rows = [line.split("\t") for line in tshark.stdout.splitlines()]
    assert len(rows) == 16 and all("53" in (udp + tcp).split(",") for udp, tcp, _ in rows), rows
    assert {name for _, _, name in rows if name} == {"a.example", "b.example", "six.example", "tcp.example"}
    assert b"filtered:   24 frames did not match --filter 'port 53'" in err


def test_frames_filtered_out_are_no_sequence_gap(all_frames: list[bytes], tmp_path: Path) -> None:
    """GENEVE copies numbered 1..40 (bpftap's option), most filtered out: no loss counted, the gap 20 -> 22 is."""
    collector = Collector("127.0.0.1", 0, tmp_path / "g.pcapng", tunnels=("geneve",), geneve_port=0,
                          inner_filter=compile_filter("arp"))
    numbered = [(n + 1, f) for n, f in enumerate(all_frames) if n != 20]  # copy 21 lost on the way
    with serving(collector):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for seq, frame in numbered:
                s.sendto(geneve.encode(9, frame, direction=1, ifindex=3, seq=seq), ("127.0.0.1", collector.geneve_port))
        wait_for(lambda: collector.stats.received == len(numbered))
    assert (collector.stats.written, collector.stats.filtered) == (2, len(numbered) - 2)
    assert collector.stats.lost == {"geneve/9": 1} and collector.stats.reordered == {}
