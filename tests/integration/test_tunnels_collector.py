"""The collector receives every tunnel type over IPv4 and IPv6: UDP sockets and raw GRE sockets.

Runs inside a network namespace of its own (loopback only): a raw socket
for IP protocol 47 sees every GRE packet of its namespace, so sharing the
host's would mix in other runs' traffic. Copies are sent with the Python
encoders; what the collector writes must be the inner frames, with the
metadata in each comment and the direction in the pcapng flags.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap.collector import cli
from bpftap.collector.pcapng import read_pcapng
from bpftap.collector.server import Collector
from bpftap.tunnels import erspan, geneve, gre, vxlan

from ..netns import inside_new_netns

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets and network namespaces need root"),
]
T = 1_700_000_000_000_000_123


@pytest.fixture(scope="module", autouse=True)
def private_netns() -> Iterator[str]:
    """Move this thread into a fresh namespace with only loopback, and back out afterwards."""
    with inside_new_netns("bttun") as name:
        yield name


def inner(i: int) -> bytes:
    return bytes(Ether(src=f"02:00:00:00:00:{i:02x}", dst="02:00:00:00:00:ff")
                 / IP(src="198.18.1.1", dst="198.18.3.1") / UDP(sport=1000 + i, dport=7000) / Raw(b"x" * i))


def serving(collector: Collector) -> tuple[threading.Thread, threading.Event]:
    collector.bind()
    stop = threading.Event()
    thread = threading.Thread(target=collector.serve, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def finish(collector: Collector, thread: threading.Thread, stop: threading.Event, received: int) -> None:
    deadline = time.monotonic() + 3
    while collector.stats.received < received and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(3)
    assert not thread.is_alive()
    assert collector.stats.received == received, collector.stats


def send_udp(host: str, port: int, datagrams: list[bytes]) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        for d in datagrams:
            s.sendto(d, (host, port))
        return int(s.getsockname()[1])


def send_gre(host: str, packets: list[bytes]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_RAW, 47) as s:
        for p in packets:
            s.sendto(p, (host, 0))


def directions(path: Path) -> list[str]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.packet_flags_direction"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_type_over_each_family(host: str, tmp_path: Path) -> None:
    out = tmp_path / "all.pcapng"
    collector = Collector(host, 0, out, geneve_port=0)
    thread, stop = serving(collector)
    assert "(gre, erspan2, erspan3)" in collector.describe()
    sport = send_udp(host, collector.port, [vxlan.encode(42, inner(1))])
    gport = send_udp(host, collector.geneve_port, [geneve.encode(43, inner(2), direction=1, ifindex=5, seq=1)])
    send_gre(host, [gre.encode(inner(3), key=44, seq=1), gre.encode(inner(4)),
                    erspan.encode2(45, inner(5), seq=1, ifindex=6),
                    erspan.encode3(46, inner(6), seq=1, direction=2, ifindex=7, timestamp_ns=T)])
    finish(collector, thread, stop, 6)
    peer = f"[{host}]" if ":" in host else host
    got = sorted((f, c) for _, f, c in read_pcapng(out))
    assert got == sorted([
        (inner(1), f"tunnel=vxlan vni=42 from={peer}:{sport}"),
        (inner(2), f"tunnel=geneve vni=43 seq=1 dir=ingress if=5 from={peer}:{gport}"),
        (inner(3), f"tunnel=gre key=44 seq=1 from={host}"),
        (inner(4), f"tunnel=gre from={host}"),
        (inner(5), f"tunnel=erspan2 session=45 seq=1 if=6 from={host}"),
        (inner(6), f"tunnel=erspan3 session=46 seq=1 dir=egress if=7 ts=1700000000.000000123 from={host}"),
    ])
    assert collector.stats.per_session == {"vxlan/42": 1, "geneve/43": 1, "gre/44": 1, "gre": 1, "erspan2/45": 1,
                                           "erspan3/46": 1}
    if shutil.which("tshark"):
        assert sorted(int(d, 0) for d in directions(out)) == [1, 2]  # inbound (geneve), outbound (erspan3)


def test_any_address_takes_both_families(tmp_path: Path) -> None:
    collector = Collector("::", 0, tmp_path / "ds.pcapng", tunnels=["gre"], geneve_port=0)
    thread, stop = serving(collector)
    assert [lst.describe() for lst in collector.listeners] == ["ip proto 47 on ::", "ip proto 47 on 0.0.0.0"]
    send_gre("127.0.0.1", [gre.encode(inner(1), key=1)])
    send_gre("::1", [gre.encode(inner(2), key=2)])
    finish(collector, thread, stop, 2)
    assert sorted(f for _, f, _ in read_pcapng(tmp_path / "ds.pcapng")) == sorted([inner(1), inner(2)])


def test_tunnel_filter_counts_what_it_drops(tmp_path: Path) -> None:
    collector = Collector("127.0.0.1", 0, tmp_path / "f.pcapng", tunnels=["erspan3"])
    thread, stop = serving(collector)
    assert [lst.kind for lst in collector.listeners] == ["gre"]
    send_gre("127.0.0.1", [gre.encode(inner(1)), erspan.encode2(1, inner(2), seq=1),
                           erspan.encode3(3, inner(3), seq=1), b"\x00\x00\x08\x00garbage"])
    finish(collector, thread, stop, 4)
    assert collector.stats.malformed == {"tunnel": 2, "gre:protocol": 1}
    assert [f for _, f, _ in read_pcapng(tmp_path / "f.pcapng")] == [inner(3)]


def test_sequence_gaps_are_counted(tmp_path: Path) -> None:
    collector = Collector("127.0.0.1", 0, tmp_path / "s.pcapng", tunnels=["gre", "erspan2"])
    thread, stop = serving(collector)
    # 3 and 4 skipped: lost 2; 4 late after all: lost 1, reordered 1; 6 again: a segment of one GSO copy,
    # neither; then a restart at 1
    seqs = [1, 2, 5, 4, 6, 6, 1, 2]
    send_gre("127.0.0.1", [gre.encode(inner(1), key=7, seq=s) for s in seqs]
             + [erspan.encode2(9, inner(1), seq=s) for s in (10, 20)])
    finish(collector, thread, stop, len(seqs) + 2)
    assert collector.stats.lost == {"gre/7": 1, "erspan2/9": 9}
    assert collector.stats.reordered == {"gre/7": 1}
    assert collector.stats.written == len(seqs) + 2


def test_cli_lists_every_socket(tmp_path: Path) -> None:
    parser = cli.argparse.ArgumentParser(prog="bpftap")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["collect", "--listen", "127.0.0.1:0", "--geneve-port", "0",
                              "--out", str(tmp_path / "c.pcapng"), "--duration", "0.3"])
    err = io.StringIO()
    assert cli.run_collect(args, stdout=io.StringIO(), stderr=err) == 0
    assert re.search(r"listening on udp 127\.0\.0\.1:\d+ \(vxlan\), udp 127\.0\.0\.1:\d+ \(geneve\), "
                     r"ip proto 47 on 127\.0\.0\.1 \(gre, erspan2, erspan3\), writing ", err.getvalue()), err.getvalue()
