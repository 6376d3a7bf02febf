"""The collector's capture input (--interface) with fragments the kernel made, and crafted ones.

Two namespaces of the test's own, joined by a veth pair (tx0 -- rx0): a
sender in the first sends VXLAN datagrams larger than the MTU from a
plain UDP socket, so its IP layer fragments them (IPv4 with DF clear,
IPv6 with a fragment header); the collector in the second reads rx0 with
a packet socket and must write the inner frames byte for byte, and tshark
must find nothing malformed in what it wrote. Hand-built fragments (an
overlap, a duplicate: no kernel sends those) go through the same veth
from a packet socket on tx0. A recording of rx0 taken alongside, as a
classic pcap, must give the same frames through ``--read``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap.collector import cli
from bpftap.collector.pcapng import read_pcapng
from bpftap.collector.server import Collector
from bpftap.filter.pcap import CompiledFilter, compile_filter
from bpftap.tunnels import vxlan

from ..netns import inside_new_netns

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="packet sockets and network namespaces need root"),
]

TX_MAC, RX_MAC = "02:00:00:00:05:01", "02:00:00:00:05:02"
TX4, RX4 = "198.18.5.1", "198.18.5.2"
TX6, RX6 = "2001:db8:5::1", "2001:db8:5::2"

# Runs in the sender's namespace: datagrams (hex) from stdin to (host, port) over UDP,
# fragmented by the kernel (IP_PMTUDISC_DONT: IPv4 fragments with DF clear), or raw frames on tx0.
SENDER = """
import json, socket, sys
job = json.load(sys.stdin)
if job["frames"]:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("tx0", 0))
        for f in job["frames"]:
            s.send(bytes.fromhex(f))
else:
    family = socket.AF_INET6 if ":" in job["host"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
        else:
            s.setsockopt(socket.IPPROTO_IPV6, 23, 0)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DONT
        for d in job["datagrams"]:
            s.sendto(bytes.fromhex(d), (job["host"], 4789))
"""


@pytest.fixture(scope="module")
def sender_ns() -> Iterator[str]:
    name = f"btcs-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module", autouse=True)
def receiver_ns(sender_ns: str) -> Iterator[str]:
    """This thread in the receiving namespace (rx0), the sender's tx0 configured, static neighbours."""
    setup = [["link", "add", "rx0", "address", RX_MAC, "type", "veth", "peer", "name", "tx0", "address", TX_MAC,
              "netns", sender_ns],
             ["addr", "add", f"{RX4}/24", "dev", "rx0"], ["addr", "add", f"{RX6}/64", "dev", "rx0", "nodad"],
             ["link", "set", "rx0", "up"]]
    with inside_new_netns("btcr", setup) as name:
        for cmd in (["addr", "add", f"{TX4}/24", "dev", "tx0"], ["addr", "add", f"{TX6}/64", "dev", "tx0", "nodad"],
                    ["link", "set", "tx0", "up"], ["link", "set", "lo", "up"],
                    ["neigh", "replace", RX4, "lladdr", RX_MAC, "dev", "tx0", "nud", "permanent"],
                    ["neigh", "replace", RX6, "lladdr", RX_MAC, "dev", "tx0", "nud", "permanent"]):
            subprocess.run(["ip", "-n", sender_ns, *cmd], check=True)
        yield name


def set_mtu(sender_ns: str, mtu: int) -> None:
    subprocess.run(["ip", "link", "set", "rx0", "mtu", str(mtu)], check=True)
    subprocess.run(["ip", "-n", sender_ns, "link", "set", "tx0", "mtu", str(mtu)], check=True)


def send(sender_ns: str, *, host: str = "", datagrams: Sequence[bytes] = (), frames: Sequence[bytes] = ()) -> None:
    job = {"host": host, "datagrams": [d.hex() for d in datagrams], "frames": [f.hex() for f in frames]}
    subprocess.run(["ip", "netns", "exec", sender_ns, sys.executable, "-c", SENDER], input=json.dumps(job),
                   text=True, check=True, timeout=60)


def inner(i: int, size: int) -> bytes:
    """An inner Ethernet/IPv4/UDP frame of `size` bytes, numbered `i` (never sent itself)."""
    head = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.1", dst="198.18.3.1", id=i)
    pkt = head / UDP(sport=1000 + i, dport=7000)
    return bytes(pkt / Raw(bytes((i + k) & 0xFF for k in range(size - len(pkt)))))


class Recorder:
    """A plain packet socket on rx0 keeping every frame received, for --read (a classic pcap)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: read only at the end
        self.sock.bind(("rx0", 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []

    def drain(self) -> None:
        try:
            while True:
                data, addr = self.sock.recvfrom(1 << 17)
                if addr[2] != socket.PACKET_OUTGOING:
                    self.frames.append(data)
        except TimeoutError:
            self.sock.close()

    def write(self, path: Path) -> None:
        out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 18, 1)
        for i, f in enumerate(self.frames):
            out += struct.pack("<IIII", 1_700_000_000, i, len(f), len(f)) + f
        path.write_bytes(out)


def collect(out: Path, sender_ns: str, *, host: str = "", datagrams: Sequence[bytes] = (),
            frames: Sequence[bytes] = (), inner_filter: CompiledFilter | None = None) -> tuple[Collector, Recorder]:
    """Serve on rx0 while the sender sends; stop once rx0 has been quiet for a moment."""
    collector = Collector("0.0.0.0", 4789, out, interface="rx0", inner_filter=inner_filter)
    collector.bind()
    recorder = Recorder()
    stop = threading.Event()
    thread = threading.Thread(target=collector.serve, args=(stop,), daemon=True)
    thread.start()
    send(sender_ns, host=host, datagrams=datagrams, frames=frames)
    deadline, last = time.monotonic() + 10, -1
    while time.monotonic() < deadline and collector.stats.captured != last:
        last = collector.stats.captured
        time.sleep(0.3)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    recorder.drain()
    return collector, recorder


def no_malformed(pcap: Path) -> None:
    if shutil.which("tshark") is None:
        return
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "_ws.malformed || _ws.expert.severity >= warning"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "", out
    count = subprocess.run(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(count) == len(read_pcapng(pcap))


@pytest.mark.parametrize(("host", "mtu"), [(RX4, 1500), (RX6, 1500), (RX4, 1280), (RX6, 1280)])
def test_kernel_fragments_are_reassembled(host: str, mtu: int, sender_ns: str, tmp_path: Path) -> None:
    set_mtu(sender_ns, mtu)
    sizes = [60, 1400, 1500, 3000, 8972, 9000, 30000, 65000]
    frames = [inner(i, size) for i, size in enumerate(sizes)]
    collector, recorder = collect(tmp_path / "c.pcapng", sender_ns, host=host,
                                  datagrams=[vxlan.encode(42, f) for f in frames])
    stats = collector.stats
    got = read_pcapng(tmp_path / "c.pcapng")
    assert [f for _, f, _ in got] == frames, stats
    assert all(c is not None and c.startswith(f"tunnel=vxlan vni=42 from={'[' + TX6 + ']' if ':' in host else TX4}:")
               for _, _, c in got)
    ip_hlen = 40 + 8 if ":" in host else 20  # IPv6 fragments carry a fragment header
    room = (mtu - ip_hlen) // 8 * 8
    expected = [-(-(8 + 8 + len(f)) // room) for f in frames]  # UDP + VXLAN + inner, per fragment
    assert stats.reassembly is not None
    assert stats.reassembly["fragments"] == sum(n for n in expected if n > 1), stats
    assert stats.reassembly["reassembled"] == sum(1 for n in expected if n > 1)
    assert {k: v for k, v in stats.reassembly.items() if v and k not in ("fragments", "reassembled")} == {}
    assert stats.malformed == {} and stats.pending == (0, 0) and stats.kernel_drops == 0
    assert stats.received == stats.written == len(frames)
    no_malformed(tmp_path / "c.pcapng")
    # the same frames, recorded alongside, through --read
    recorder.write(tmp_path / "rx.pcap")
    args = argparse_args(["--read", str(tmp_path / "rx.pcap"), "--out", str(tmp_path / "r.pcapng")])
    out = io.StringIO()
    assert cli.run_collect(args, stdout=out, stderr=io.StringIO()) == 0
    assert [f for _, f, _ in read_pcapng(tmp_path / "r.pcapng")] == frames
    assert f"{stats.reassembly['reassembled']} datagrams reassembled, 0 pending" in out.getvalue()


@pytest.mark.parametrize("host", [RX4, RX6])
def test_interface_filter_sees_reassembled_inner_frames(host: str, sender_ns: str, tmp_path: Path) -> None:
    """--interface with --filter: fragments reassembled first, then libpcap's matcher on each whole inner frame."""
    set_mtu(sender_ns, 1280)
    frames = [inner(i, size) for i, size in enumerate([60, 3000, 9000, 60, 3000])]
    collector, _ = collect(tmp_path / "f.pcapng", sender_ns, host=host, datagrams=[vxlan.encode(42, f) for f in frames],
                           inner_filter=compile_filter("udp src port 1001 or greater 8000"))
    assert [f for _, f, _ in read_pcapng(tmp_path / "f.pcapng")] == frames[1:3]
    stats = collector.stats
    assert (stats.received, stats.written, stats.filtered, stats.malformed) == (5, 2, 3, {})
    assert stats.reassembly is not None and stats.reassembly["reassembled"] == 3


def argparse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bpftap")
    cli.register(parser.add_subparsers())
    return parser.parse_args(["collect", *argv])


def crafted(host: str, ident: int, payload: bytes, pieces: list[tuple[int, int]]) -> list[bytes]:
    """Fragments of one datagram to `host`:4789 carrying `payload`, cut at (offset, length) as given."""
    v6 = ":" in host
    udp = bytes(UDP(sport=5555, dport=4789, chksum=0) / Raw(payload))
    total = len(udp)
    out = []
    for offset, length in pieces:
        more = offset + length < total
        data = udp[offset:offset + length]
        if v6:
            ip = IPv6(src=TX6, dst=host) / IPv6ExtHdrFragment(nh=17, id=ident, offset=offset // 8, m=int(more))
        else:
            ip = IP(src=TX4, dst=host, id=ident, proto=17, flags="MF" if more else 0, frag=offset // 8)
        out.append(bytes(Ether(src=TX_MAC, dst=RX_MAC) / ip / Raw(data)))
    return out


@pytest.mark.parametrize("host", [RX4, RX6])
def test_crafted_overlap_and_duplicate_through_a_veth(host: str, sender_ns: str, tmp_path: Path) -> None:
    set_mtu(sender_ns, 1500)
    good, bad = inner(1, 1200), inner(2, 1200)  # 1216 bytes of UDP datagram each
    frames = (crafted(host, 7, vxlan.encode(1, bad), [(0, 512), (504, 512), (1016, 200)])
              + crafted(host, 8, vxlan.encode(1, good), [(0, 512), (0, 256), (1024, 192), (0, 512), (512, 512)]))
    # the kernel's filter drops TCP and ICMPv6; UDP to another port reaches Python, which ignores it
    ip = IPv6(src=TX6, dst=host) if ":" in host else IP(src=TX4, dst=host)
    frames += [bytes(Ether(src=TX_MAC, dst=RX_MAC) / ip / layer) for layer in (TCP(dport=4789), ICMPv6EchoRequest(),
                                                                               UDP(dport=53))]
    collector, _ = collect(tmp_path / "x.pcapng", sender_ns, frames=frames)
    assert (collector.stats.captured, collector.stats.ignored) == (9, 1)
    assert [f for _, f, _ in read_pcapng(tmp_path / "x.pcapng")] == [good]
    assert collector.stats.reassembly is not None
    # datagram 7 is discarded at its overlapping 2nd fragment and its 3rd is dropped as late;
    # datagram 8 ignores its two duplicates and completes
    assert {k: v for k, v in collector.stats.reassembly.items() if v} == {
        "fragments": 8, "reassembled": 1, "duplicate": 2, "overlap": 1, "late": 1}
    assert collector.stats.pending == (0, 0)
    no_malformed(tmp_path / "x.pcapng")
