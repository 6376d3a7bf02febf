"""Collector end to end on loopback: real VXLAN datagrams in, pcapng out; plus the CLI.

Network safety: every socket here binds or sends to 127.0.0.1 / ::1 only.
These collectors take VXLAN only (`tunnels=("vxlan",)`, `--tunnel vxlan`):
the other types have their own tests (tests/integration/test_tunnels_collector.py), which
run in a network namespace of their own because raw sockets see every GRE
packet of the host.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap.collector import cli
from bpftap.collector.pcapng import PcapngWriter, read_pcapng
from bpftap.collector.server import (
    POLL_INTERVAL,
    Collector,
    CollectorError,
    CollectorStats,
    format_summary,
    parse_listen,
)
from bpftap.tunnels import geneve
from bpftap.tunnels.vxlan import encode

from ..probes import has_ipv6_loopback

VX = ("vxlan",)


def inner(i: int) -> bytes:
    """A distinct inner Ethernet/IPv4/UDP frame (never sent anywhere itself)."""
    pkt = (Ether(src=f"02:00:00:00:00:{i:02x}", dst="02:00:00:00:00:ff")
           / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1000 + i, dport=53) / Raw(b"x" * i))
    return bytes(pkt)


def garbage() -> list[tuple[bytes, str]]:
    """Datagrams a stranger might send, with the malformed reason each must count as."""
    good = encode(42, inner(0))
    return [
        (b"", "short"),
        (b"\x08", "short"),
        (encode(42, b"tooshort"), "short"),
        (b"\x00" + good[1:], "flags"),
        (b"\x80" + good[1:], "flags"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "flags"),
    ]


@contextmanager
def serving(collector: Collector, **serve_kw: object) -> Iterator[dict[str, object]]:
    """Run ``collector.serve`` in a thread; stop it and wait for it on exit."""
    collector.bind()
    stop = threading.Event()
    result: dict[str, object] = {}

    def target() -> None:
        result["stats"] = collector.serve(stop, **serve_kw)  # type: ignore[arg-type]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(2)
        assert not thread.is_alive(), "serve() did not stop"


def wait_for(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def send_all(family: int, host: str, port: int, datagrams: list[bytes]) -> int:
    """Send from a loopback socket; returns the sender's port."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        for d in datagrams:
            s.sendto(d, (host, port))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0", ("0.0.0.0", 4789)),
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (" 10.0.0.1:0 ", ("10.0.0.1", 0)),
        ("[::1]:4790", ("::1", 4790)),
        ("[::1]", ("::1", 4789)),
        ("::1", ("::1", 4789)),
        ("::", ("::", 4789)),
        ("fe80::1%lo", ("fe80::1%lo", 4789)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty listen address"),
        ("localhost", "not an IP address"),
        ("1.2.3.4:", "port '' is not 0..65535"),
        ("1.2.3.4:x", "port 'x'"),
        ("1.2.3.4:65536", "port '65536'"),
        ("1.2.3.4:-1", "port '-1'"),
        ("[::1", "missing ']'"),
        ("[::1]4789", "expected ':PORT'"),
        ("[1.2.3.4]:5", "only for IPv6"),
        ("1.2.3:4789", "not an IP address"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_listen(text)


def test_ipv4_good_and_garbage(tmp_path: Path) -> None:
    out = tmp_path / "v4.pcapng"
    collector = Collector("127.0.0.1", 0, out, vnis={42, 43}, tunnels=VX)
    bad = [*garbage(), (encode(99, inner(9)), "vni")]
    good = [(42 + i % 2, inner(i)) for i in range(6)]
    datagrams = [encode(v, f) for v, f in good[:3]] + [d for d, _ in bad] + [
        encode(v, f) for v, f in good[3:]]
    before = time.time_ns()
    with serving(collector) as result:
        assert collector.port != 0
        sport = send_all(socket.AF_INET, "127.0.0.1", collector.port, datagrams)
        wait_for(lambda: collector.stats.received == len(datagrams))
    after = time.time_ns()
    stats = result["stats"]
    assert isinstance(stats, CollectorStats)
    assert read_pcapng(out) == [
        (pytest.approx((before + after) // 2, abs=after - before), f,
         f"tunnel=vxlan vni={v} from=127.0.0.1:{sport}")
        for v, f in good
    ]
    assert stats.received == len(datagrams)
    assert stats.written == 6
    expected_bad: dict[str, int] = {}
    for _, reason in bad:
        key = reason if reason == "vni" else f"vxlan:{reason}"
        expected_bad[key] = expected_bad.get(key, 0) + 1
    assert stats.malformed == expected_bad
    assert stats.received == stats.written + sum(stats.malformed.values())
    assert stats.per_session == {"vxlan/42": 3, "vxlan/43": 3}
    assert stats.per_sender == {"127.0.0.1": len(datagrams)}
    assert stats.files == [out]
    assert stats.bytes_written == out.stat().st_size
    assert collector.kernel_timestamps


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_ipv6_loopback(tmp_path: Path) -> None:
    out = tmp_path / "v6.pcapng"
    collector = Collector("::1", 0, out, tunnels=VX)
    frames = [inner(i) for i in range(3)]
    with serving(collector):
        sport = send_all(socket.AF_INET6, "::1", collector.port,
                         [encode(7, frames[0]), b"junk", encode(8, frames[1]),
                          encode(7, frames[2])])
        wait_for(lambda: collector.stats.received == 4)
    assert collector.address == f"[::1]:{collector.port}"
    assert [(f, c) for _, f, c in read_pcapng(out)] == [
        (frames[0], f"tunnel=vxlan vni=7 from=[::1]:{sport}"),
        (frames[1], f"tunnel=vxlan vni=8 from=[::1]:{sport}"),
        (frames[2], f"tunnel=vxlan vni=7 from=[::1]:{sport}"),
    ]
    assert collector.stats.malformed == {"vxlan:short": 1}
    assert collector.stats.per_sender == {"::1": 4}


@pytest.mark.skipif(not has_ipv6_loopback() or Path("/proc/sys/net/ipv6/bindv6only").read_text().strip()
                    != "0", reason="needs a dual-stack IPv6 socket")
def test_dual_stack_shows_ipv4_senders_as_ipv4(tmp_path: Path) -> None:
    collector = Collector("::", 0, tmp_path / "ds.pcapng", tunnels=VX)
    with serving(collector):
        sport = send_all(socket.AF_INET, "127.0.0.1", collector.port, [encode(5, inner(1))])
        wait_for(lambda: collector.stats.written == 1)
    assert read_pcapng(tmp_path / "ds.pcapng")[0][2] == f"tunnel=vxlan vni=5 from=127.0.0.1:{sport}"


def test_rotation_through_the_collector(tmp_path: Path) -> None:
    collector = Collector("127.0.0.1", 0, tmp_path / "r.pcapng", rotate_bytes=600, tunnels=VX)
    frames = [inner(i) for i in range(10)]
    with serving(collector, max_packets=10) as result:
        send_all(socket.AF_INET, "127.0.0.1", collector.port, [encode(1, f) for f in frames])
        wait_for(lambda: "stats" in result)
    stats = collector.stats
    assert len(stats.files) > 2
    assert [f for p in stats.files for _, f, _ in read_pcapng(p)] == frames


def test_stops_promptly_and_on_limits(tmp_path: Path) -> None:
    collector = Collector("127.0.0.1", 0, tmp_path / "a.pcapng", tunnels=VX)
    stop = threading.Event()
    thread = threading.Thread(target=collector.serve, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    stop.set()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - t0 < POLL_INTERVAL + 0.3

    t0 = time.monotonic()
    stats = Collector("127.0.0.1", 0, tmp_path / "b.pcapng", tunnels=VX).serve(duration=0.2)
    assert 0.2 <= time.monotonic() - t0 < 0.6
    assert stats.received == 0 and read_pcapng(tmp_path / "b.pcapng") == []

    limited = Collector("127.0.0.1", 0, tmp_path / "c.pcapng", tunnels=VX)
    limited.bind()
    send_all(socket.AF_INET, "127.0.0.1", limited.port, [encode(1, inner(i)) for i in range(5)])
    assert limited.serve(max_packets=3, duration=3).written == 3
    assert len(read_pcapng(tmp_path / "c.pcapng")) == 3


def test_bind_errors_name_the_culprit(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(CollectorError) as info:
            Collector("127.0.0.1", port, tmp_path / "a.pcapng", tunnels=VX).bind()
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value).startswith(
        f"bind udp socket on 127.0.0.1:{port}: Address already in use (EADDRINUSE); ")
    assert not (tmp_path / "a.pcapng").exists()

    for out in (tmp_path / "no-such-dir" / "a.pcapng", tmp_path):
        with pytest.raises(CollectorError, match="create capture file on") as info:
            Collector("127.0.0.1", 0, out, tunnels=VX).bind()
        assert str(out) in str(info.value)
    with pytest.raises(ValueError):
        Collector("localhost", 0, tmp_path / "a.pcapng")
    with pytest.raises(CollectorError, match=r"bind udp socket on \[fe80::1%nosuchif0\]:0"):
        Collector("fe80::1%nosuchif0", 0, tmp_path / "a.pcapng", tunnels=VX).bind()
    with pytest.raises(CollectorError, match="create capture file on /dev/full: No space"):
        Collector("127.0.0.1", 0, Path("/dev/full"), tunnels=VX).bind()


def test_write_failure_mid_run_is_a_collector_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_args: object, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    collector = Collector("127.0.0.1", 0, tmp_path / "a.pcapng", tunnels=VX)
    collector.bind()
    monkeypatch.setattr(PcapngWriter, "write", disk_full)
    send_all(socket.AF_INET, "127.0.0.1", collector.port, [encode(1, inner(1))])
    with pytest.raises(CollectorError, match=r"write capture file on .*a\.pcapng: No space"):
        collector.serve(duration=2)
    with pytest.raises(ValueError, match="already closed"):
        collector.serve()


def test_format_summary() -> None:
    stats = CollectorStats(received=9, written=6, malformed={"vxlan:short": 2, "vni": 1},
                           per_session={"vxlan/43": 2, "vxlan/42": 4}, per_sender={"127.0.0.1": 9},
                           lost={"gre/7": 3}, bytes_written=1234,
                           files=[Path("a.pcapng"), Path("a-0001.pcapng")])
    text = format_summary(stats)
    assert "9 datagrams, wrote 6 frames (1234 bytes" in text
    assert "per session: vxlan/42=4  vxlan/43=2" in text
    assert "lost:       gre/7=3 (sequence gaps)" in text
    assert "per sender: 127.0.0.1=9" in text
    assert "malformed:  vni=1  vxlan:short=2" in text
    assert "a.pcapng" in text and "a-0001.pcapng" in text
    assert "malformed:  none" in format_summary(CollectorStats())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpftap")
    cli.register(p.add_subparsers())
    return p


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rotate-mb", "0"], "--rotate-mb must be > 0"),
        (["--rotate-mb", "x"], "--rotate-mb 'x' is not a number"),
        (["--count", "1.5"], "--count '1.5' is not a number"),
        (["--duration", "-1"], "--duration must be > 0"),
        (["--vni", "16777216"], "VNI '16777216' is not 0..16777215"),
        (["--tunnel", "nvgre"], "invalid choice: 'nvgre'"),
        (["--geneve-port", "70000"], "port '70000' is not 0..65535"),
        (["--listen", "1.2.3.4:99999"], "port '99999'"),
    ],
)
def test_cli_validates_at_parse_time(capsys: pytest.CaptureFixture[str], argv: list[str],
                                     message: str) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["collect", "--out", "x.pcapng", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_help_has_examples_and_signals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["collect", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "SIGINT" in text and "SIGTERM" in text


def test_cli_usage_errors_return_2(tmp_path: Path) -> None:
    args = parser().parse_args(["collect", "--tunnel", "vxlan", "--out", str(tmp_path / "a.pcapng")])
    args.listen = "not-an-address"
    err = io.StringIO()
    assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 2
    assert "not-an-address" in err.getvalue()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        args.listen = f"127.0.0.1:{busy.getsockname()[1]}"
        err = io.StringIO()
        assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 2
    assert f"{args.listen}: Address already in use" in err.getvalue()

    args = parser().parse_args(["collect", "--tunnel", "vxlan", "--listen", "127.0.0.1:0", "--out", str(tmp_path)])
    err = io.StringIO()
    assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 2
    assert f"create capture file on {tmp_path}" in err.getvalue()


def listening_port(err: io.StringIO) -> int:
    wait_for(lambda: "listening on" in err.getvalue())
    match = re.search(r"listening on udp 127\.0\.0\.1:(\d+) \(vxlan\), writing ", err.getvalue())
    assert match, err.getvalue()
    return int(match.group(1))


def test_cli_collects_until_count(tmp_path: Path) -> None:
    out = tmp_path / "c.pcapng"
    args = parser().parse_args(["collect", "--tunnel", "vxlan", "--listen", "127.0.0.1:0", "--out", str(out),
                                "--count", "2", "--vni", "42", "--duration", "5"])
    assert args.func is cli.run_collect
    stdout, stderr = io.StringIO(), io.StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(cli.run_collect(
        args, stdout=stdout, stderr=stderr)), daemon=True)
    thread.start()
    port = listening_port(stderr)
    send_all(socket.AF_INET, "127.0.0.1", port,
             [encode(42, inner(1)), encode(7, inner(2)), b"x", encode(42, inner(3))])
    thread.join(3)
    assert result == [0]
    assert [f for _, f, _ in read_pcapng(out)] == [inner(1), inner(3)]
    assert "malformed:  vni=1  vxlan:short=1" in stdout.getvalue()


def test_cli_sigint_stops_and_prints_summary(tmp_path: Path) -> None:
    args = parser().parse_args(["collect", "--tunnel", "vxlan", "--listen", "127.0.0.1:0",
                                "--out", str(tmp_path / "s.pcapng"), "--duration", "5"])
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGINT)

    def interrupt() -> None:
        send_all(socket.AF_INET, "127.0.0.1", listening_port(stderr), [encode(1, inner(1))])
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt, daemon=True)
    helper.start()
    t0 = time.monotonic()
    assert cli.run_collect(args, stdout=stdout, stderr=stderr) == 0
    assert time.monotonic() - t0 < 2
    helper.join(1)
    assert signal.getsignal(signal.SIGINT) is previous
    assert "wrote 1 frames" in stdout.getvalue()


def test_segments_of_one_gso_copy_share_a_sequence_number(tmp_path: Path) -> None:
    """GENEVE segments of one super-packet's copy carry its number: no false loss, no false reordering."""
    collector = Collector("127.0.0.1", 0, tmp_path / "seq.pcapng", tunnels=("geneve",), geneve_port=0)
    seqs = [1, 1, 1, 2, 2, 4, 4, 5, 4]
    with serving(collector):
        send_all(socket.AF_INET, "127.0.0.1", collector.geneve_port,
                 [geneve.encode(9, inner(i), direction=1, ifindex=3, seq=n) for i, n in enumerate(seqs)])
        wait_for(lambda: collector.stats.received == len(seqs))
    assert collector.stats.written == len(seqs)
    assert collector.stats.lost == {"geneve/9": 1}  # copy 3 only
    assert collector.stats.reordered == {}
