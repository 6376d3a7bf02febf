"""Big packets in the lab: every byte of a TCP flow reaches the kernel's VXLAN device, a CPU kept busy.

The flow runs at 1 and 5 Gbit/s where copies leave whole or resegmented, at
300 Mbit/s where they take the slower fragment path (one clone per outer
fragment: at 1 Gbit/s, 100,000 a second, and a loaded CI runner's rings
dropped 325 of them in one run).

All traffic on the tapped host's eth0 is mirrored to the collector host,
whose own VXLAN devices decapsulate (v4 and v6 outer). The copies of a TCP
flow's GSO super-packets are encapsulated whole and segmented on the
collector link (resegment: smaller segments where the wire's do not fit);
with `oversize: fragment` they are segmented to the wire's MSS first and a
copy over the collector link's MTU leaves as outer fragments that the
collector's kernel reassembles (its IP statistics count them), or is cut to
fit in truncate mode. The decapsulated copies are captured (headers only) and the TCP
sequence space they cover is compared with the bytes the iperf3 server
received (not those the client wrote: at the end of a test the server may
close its socket with data still in flight and reset the connection, and
those bytes never cross the tapped host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.collector.pcapng import read_pcapng
from bpftap.lab import Lab

from .agent_lab import BPFTAP, Agent, send_frames
from .tcpflow import Direction, flows, frame_flows, pcap_frames

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
    pytest.mark.skipif(shutil.which("iperf3") is None or shutil.which("dumpcap") is None,
                       reason="iperf3 or dumpcap missing"),
]

CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: all, remote: "{remote}", vni: {vni}{extra}}}
rules:
  - {{number: 10, sessions: [all]}}
"""
VNI = {4: 42, 6: 43}
COOKIE = 37  # iperf3 opens its data connection with a 37-byte cookie
PORT = 5201


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        col = lab.col
        for family, addr in ((4, col.ip4), (6, col.ip6)):
            dev = f"vx{VNI[family]}"
            lab.run(col, ["ip", "link", "add", dev, "type", "vxlan", "id", str(VNI[family]), "dstport", "4789",
                          "local", str(addr), "nolearning", *(["udp6zerocsumrx"] if family == 6 else [])])
            lab.run(col, ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
            lab.run(col, ["ip", "link", "set", dev, "mtu", "9000", "up"])
        yield lab


def set_mtus(lab: Lab, underlay: int, inner: int) -> None:
    """The collector link's MTU, and that of every link the mirrored flow crosses."""
    for host, dev in ((lab.tap, "eth2"), (lab.col, "eth0")):
        lab.run(host, ["ip", "link", "set", dev, "mtu", str(underlay)])
    for host, dev in ((lab.src, "eth0"), (lab.tap, "eth0"), (lab.tap, "eth1"), (lab.dst, "eth0")):
        lab.run(host, ["ip", "link", "set", dev, "mtu", str(inner)])


def no_datagram_pending(lab: Lab, timeout: float = 40.0) -> None:
    """Wait until the collector holds no incomplete datagram (a lossy run's, kept for ipfrag_time, 30 s).

    Linux counts such a datagram in ReasmFails when a later copy's fragment
    reuses its identification (16 bits, a fresh agent counts from 1 again):
    it would be charged to the next run.
    """
    deadline = time.monotonic() + timeout
    while True:
        frag = next(line for line in lab.run(lab.col, ["cat", "/proc/net/sockstat"]).stdout.splitlines()
                    if line.startswith("FRAG:"))
        if frag.split()[2] == "0" or time.monotonic() > deadline:
            return
        time.sleep(1)


def reassembly(lab: Lab) -> dict[str, int]:
    """The collector host's IPv4 and IPv6 reassembly counters."""
    lines = [line.split() for line in lab.run(lab.col, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Ip:")]
    out = {f"Ip{k}": int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False) if k.startswith("Reasm")}
    for line in lab.run(lab.col, ["cat", "/proc/net/snmp6"]).stdout.splitlines():
        key, value = line.split()
        if key.startswith("Ip6Reasm"):
            out[key] = int(value)
    return out


class Capture:
    """dumpcap on a collector host's device, stopped only once it has written every frame the device received.

    dumpcap drops what it has not read yet when it is stopped, and on a
    loaded machine it can be seconds behind the kernel (writing 100 MB of
    headers to a slow disk, a CPU busy): `stop` waits until the device has
    received nothing and the file has not grown for a while, then stops it
    and checks that it wrote as many frames as its socket received.
    """

    def __init__(self, lab: Lab, dev: str, path: Path, *args: str) -> None:
        self.lab, self.dev, self.path = lab, dev, path
        self.proc = lab.popen(lab.col, ["dumpcap", "-q", "-P", "-i", dev, *args, "-w", str(path)],
                              stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # dumpcap has no ready signal

    def received(self) -> int:
        link = json.loads(self.lab.run(self.lab.col, ["ip", "-s", "-j", "link", "show", self.dev]).stdout)[0]
        return int(link["stats64"]["rx"]["packets"])

    def stop(self, timeout: float = 60.0) -> str:
        """Stop once quiet (device and file unchanged for 2 s); dumpcap's summary, asserted complete if we stopped
        it."""
        deadline, last, quiet = time.monotonic() + timeout, None, 0
        while quiet < 4 and time.monotonic() < deadline and self.proc.poll() is None:
            now = (self.received(), self.path.stat().st_size if self.path.exists() else 0)
            quiet = quiet + 1 if now == last else 0
            last = now
            time.sleep(0.5)
        stopped = self.proc.poll() is None  # (else it stopped itself, at its -c count)
        if stopped:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        captured = re.search(r"^Packets captured: (\d+)", err, re.MULTILINE)
        stats = re.search(r"received/dropped on interface .*: (\d+)/(\d+)", err)
        assert captured and stats, f"no summary from dumpcap: {err}"
        if stopped:
            assert (int(captured[1]), int(stats[2])) == (int(stats[1]), 0), f"dumpcap lost frames: {err}"
        return err


@dataclass
class Run:
    received: int  # payload bytes the iperf3 server received
    flows: dict[Any, Direction]
    reasm: dict[str, int]  # the collector's reassembly counters, this run's
    session: dict[str, Any]
    drops: dict[str, int]  # copies the internal rings dropped
    underlay: Path  # the first frames on the collector's link, whole

    def data_direction(self) -> Direction:
        """The flow that carried iperf3's data: the client side of the busiest connection."""
        return max((d for (_, dst), d in self.flows.items() if dst[1] == PORT),
                   key=lambda d: sum(e - s for s, e in d.ranges))

    def acks(self, data: Direction) -> Direction:
        key = next(k for k, d in self.flows.items() if d is data)
        return self.flows[(key[1], key[0])]


def received(iperf_json: str) -> int:
    """Payload bytes the iperf3 server received, from the client's JSON report."""
    return int(json.loads(iperf_json)["end"]["sum_received"]["bytes"])


def covers(data: Direction, received: int) -> bool:
    """Whether the copies hold every byte of the flow up to what the server received, with no gap.

    (Past that, bytes the client wrote may never have crossed the tap: the
    server reset the connection with them in flight.)
    """
    return coverage(data, received) == 1


def coverage(data: Direction, received: int) -> float:
    """The share of the flow's bytes, up to what the server received, that the copies hold."""
    end = received + COOKIE
    return sum(max(0, min(e, end) - s) for s, e in data.covered()) / end


@contextmanager
def busy_cpu() -> Iterator[None]:
    """Another process keeps one CPU busy meanwhile: a user's machine is never idle."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def mirror_flow(lab: Lab, tmp: Path, family: int, underlay: int, inner: int, seconds: int = 10,
                extra: str = "", rate: str = "1G") -> Run:
    """iperf3 at `rate` from src to dst for `seconds`, every packet mirrored to the collector's vx4x, a CPU busy."""
    set_mtus(lab, underlay, inner)
    remote = lab.col.ip4 if family == 4 else lab.col.ip6
    agent = Agent(lab, CONFIG.format(remote=remote, vni=VNI[family], extra=extra))
    try:
        no_datagram_pending(lab)
        before = reassembly(lab)
        copies, wire = tmp / "copies.pcap", tmp / "underlay.pcap"
        caps = [Capture(lab, f"vx{VNI[family]}", copies, "-s", "128", "-B", "256"),
                Capture(lab, "eth0", wire, "-c", "3000")]
        server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        with busy_cpu():
            out = lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", str(PORT), "-t", str(seconds),
                                    "-b", rate, "-J"], timeout=seconds + 30).stdout
        server.wait(timeout=10)
        for cap in caps:
            cap.stop()
        status = agent.status()
        session, drops = status["sessions"][0], status["queue_drops"]
        after = reassembly(lab)
    finally:
        assert agent.stop() == 0, agent.output()
    return Run(received(out), flows(copies),
               {k: after[k] - before.get(k, 0) for k in after}, session, drops, wire)


def tshark_errors(pcap: Path, what: str = "_ws.malformed || _ws.expert.severity == error") -> str:
    """Frames tshark finds malformed or in error, as its one-line summaries.

    Inner TCP checksums are validated (a bad one is an error). The zero UDP
    checksum of GSO copies over IPv6 is allowed for tunnels (RFC 6935), and
    Wireshark's UDP preference for it is set, as the README tells users to.
    iperf3's port is decoded as plain data: its payload is random, and now
    and then a heuristic dissector (Thrift's, once in CI) takes a frame of it
    for its protocol and finds it malformed.
    """
    return subprocess.run(["tshark", "-n", "-o", "tcp.check_checksum:TRUE", "-o", "udp.ignore_ipv6_zero_checksum:TRUE",
                           "-d", f"tcp.port=={PORT},data", "-r", str(pcap), "-Y", what],
                          capture_output=True, text=True, check=True).stdout


CASES = [
    # (id, outer family, underlay MTU, inner MTU, oversize, iperf3 rate, outer fragments expected)
    # resegment (the default): super-packets encapsulated whole, smaller segments, no fragment
    ("v4-1500-over-1500", 4, 1500, 1500, "resegment", "1G", False),
    ("v6-1500-over-1500", 6, 1500, 1500, "resegment", "1G", False),
    ("v4-1500-over-9000", 4, 9000, 1500, "resegment", "1G", False),
    # 5 Gbit/s: the sequence space passes 4 GiB after 7 s
    ("v4-1500-over-1500-5G", 4, 1500, 1500, "resegment", "5G", False),
    ("v6-1500-over-1500-5G", 6, 1500, 1500, "resegment", "5G", False),
    # segments of 9000-byte frames do not fit 1500 even resegmented: the per-segment path fragments them
    ("v4-jumbo-9000-over-1500", 4, 1500, 9000, "resegment", "300M", True),
    # fragment: the wire's exact frames, per segment and fragment on the internal pair: a slower path
    ("v4-1500-over-1500-fragment", 4, 1500, 1500, "fragment", "300M", True),
    ("v6-1500-over-1500-fragment", 6, 1500, 1500, "fragment", "300M", True),
]


@pytest.mark.parametrize(("family", "underlay", "inner", "oversize", "rate", "fragmented"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_every_byte_of_a_flow_arrives(lab: Lab, tmp_path: Path, family: int, underlay: int, inner: int,
                                      oversize: str, rate: str, fragmented: bool) -> None:
    run = mirror_flow(lab, tmp_path, family, underlay, inner, extra=f", oversize: {oversize}", rate=rate)
    data = run.data_direction()
    why = f"session {run.session}, queue drops {run.drops}, reassembly {run.reasm}"
    if rate == "5G":  # at least 99.9 % of a flow this fast (README "Big packets"); so far every byte arrived
        share = coverage(data, run.received)
        assert share >= 0.999, f"{share:.4%} of the copies' sequence space; {why}"
        assert run.session["encap_fail"] * 1000 <= run.session["packets"], why
    else:
        assert covers(data, run.received), f"gaps in the copies' sequence space; {why}"
        assert run.session["encap_fail"] == 0, why
    assert run.acks(data).segments > 0, "no copy of the other direction"
    assert run.session["oversize"] == 0, why
    v = "" if family == 4 else "6"
    if fragmented:
        assert run.session["fragments"] > 0 and run.reasm[f"Ip{v}ReasmOKs"] > 0, why
        assert run.reasm[f"Ip{v}ReasmFails"] == 0, why
    else:
        # super-packets encapsulated whole; only a frame that was no super-packet (a retransmit, the first
        # segments, a lone segment the window let out) and is over the MTU leaves as fragments: at 5 Gbit/s
        # 0.04 % of copies here, 0.17 % on a loaded CI runner
        assert run.session["gso"] > 0, why
        assert run.session["fragments"] * 100 < run.session["packets"], why
        assert run.reasm[f"Ip{v}ReasmFails"] == 0, why
    assert tshark_errors(run.underlay) == ""


def test_truncate_mode_fits_every_copy_to_the_mtu(lab: Lab, tmp_path: Path) -> None:
    run = mirror_flow(lab, tmp_path, 4, 1500, 1500, seconds=3, extra=", oversize: truncate")
    room = 1500 - 20 - 8 - 8  # inner frame bytes under the MTU
    cut = 0
    for frame in pcap_frames(run.underlay):
        assert len(frame) <= 14 + 1500
        if frame[12:14] != b"\x08\x00" or frame[23] != 17 or frame[36:38] != b"\x12\xb5":
            continue  # not a VXLAN copy
        assert struct.unpack("!H", frame[20:22])[0] & 0x3FFF == 0, "a fragment in truncate mode"
        inner = frame[50:]
        # the IP length as the original said (the frame was longer); a lab interface's own IPv6 neighbour
        # discovery may be mirrored too
        ip_len = struct.unpack("!H", inner[16:18])[0] if inner[12:14] == b"\x08\x00" else \
            40 + struct.unpack("!H", inner[18:20])[0]
        assert inner[12:14] in (b"\x08\x00", b"\x86\xdd") and len(inner) == min(14 + ip_len, room)
        cut += 14 + ip_len > room
    assert cut > 0
    assert run.session["truncated"] >= cut and run.session["fragments"] == 0
    assert not any(run.reasm.values())
    # (the cut inner frames are shorter than their IP headers say: tshark rightly notes that, as expert info)
    assert tshark_errors(run.underlay, "_ws.malformed") == ""


TWO = """
sources:
  - interface: eth0
    direction: ingress
sessions:
  - {{name: v4, remote: "{col4}", vni: 42}}
  - {{name: v6, remote: "{col6}", vni: 43}}
rules:
  - {{number: 10, sessions: [v4, v6]}}
"""


def test_the_collector_reassembles_bpftaps_fragments_itself(lab: Lab, tmp_path: Path) -> None:
    """`bpftap collect --interface` on the collector's link: the kernel does not reassemble for an AF_PACKET reader."""
    set_mtus(lab, 1500, 1500)
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    v4 = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4))
    frames = [bytes(l2 / v4 / UDP(sport=6000 + i, dport=7000) / Raw(bytes([i]) * (size - 42)))
              for i, size in enumerate((60, 1000, 1464, 1465, 1500, 1514, 1514))]
    agent = Agent(lab, TWO.format(col4=lab.col.ip4, col6=lab.col.ip6))
    out = tmp_path / "collected.pcapng"
    try:
        collector = lab.popen(lab.col, [*BPFTAP, "collect", "--interface", "eth0", "--listen", "[::]:4789",
                                        "--out", str(out), "--duration", "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        send_frames(lab, lab.src, "eth0", frames)
        summary, _ = collector.communicate(timeout=30)
        sessions = {s["name"]: s for s in agent.status()["sessions"]}
    finally:
        assert agent.stop() == 0, agent.output()
    assert collector.returncode == 0, summary
    # (the agent mirrors all of eth0: the neighbour discovery of src's own comes along)
    got = sorted(frame for _, frame, _ in read_pcapng(out) if frame in frames)
    assert got == sorted(frames * 2), summary  # each frame once over IPv4 and once over IPv6
    # two fragments each: over IPv4 the copies of frames of 1465 bytes and more, over IPv6 of 1445 and more
    assert (sessions["v4"]["fragments"], sessions["v6"]["fragments"]) == (4 * 2, 5 * 2)
    assert "18 fragments, 9 datagrams reassembled, 0 pending" in summary


GENEVE6 = """
sources:
  - interface: eth0
sessions:
  - {{name: g6, tunnel: geneve, remote: "{remote}", vni: 44}}
rules:
  - {{number: 10, sessions: [g6]}}
"""


def test_geneve_over_ipv6_to_bpftap_collect(lab: Lab, tmp_path: Path) -> None:
    """GSO copies over IPv6 carry a zero UDP checksum and one sequence number for all their segments.

    `bpftap collect` takes the zero checksum (UDP_NO_CHECK6_RX) and counts no
    loss for segments that share a number; the copies cover the flow's whole
    sequence space.
    """
    set_mtus(lab, 1500, 1500)
    out = tmp_path / "g6.pcapng"
    agent = Agent(lab, GENEVE6.format(remote=lab.col.ip6))
    try:
        collector = lab.popen(lab.col, [*BPFTAP, "collect", "--listen", f"[{lab.col.ip6}]:4789", "--tunnel", "geneve",
                                        "--out", str(out), "--duration", "14"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        with busy_cpu():
            out_json = lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", str(PORT), "-t", "5", "-b", "100M",
                                         "-J"], timeout=40).stdout
        server.wait(timeout=10)
        summary, _ = collector.communicate(timeout=40)
        session = agent.status()["sessions"][0]
    finally:
        assert agent.stop() == 0, agent.output()
    assert collector.returncode == 0, summary
    assert session["gso"] > 0, session
    got = received(out_json)
    data = max((d for (_, dst), d in frame_flows(f for _, f, _ in read_pcapng(out)).items() if dst[1] == PORT),
               key=lambda d: sum(e - s for s, e in d.ranges))
    assert covers(data, got), summary
    # (copies of the two directions leave from different CPUs and paths: some arrive reordered, none lost)
    assert re.search(r"^lost:\s+none", summary, re.MULTILINE), summary


def test_a_super_packets_copy_is_encapsulated_whole(lab: Lab, tmp_path: Path) -> None:
    """20 MB of iperf3 over a 1500 collector link (resegment): copies of super-packets leave whole, every byte arrives.

    Short enough for the kernel matrix's emulated guests, which run it to
    name the path their kernel takes (BPFTAP_GSO_REPORT: where to write the
    counters as JSON).
    """
    set_mtus(lab, 1500, 1500)
    agent = Agent(lab, CONFIG.format(remote=lab.col.ip4, vni=VNI[4], extra=""))
    copies = tmp_path / "copies.pcap"
    try:
        cap = Capture(lab, "vx42", copies, "-s", "128")
        server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        out = lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", str(PORT), "-n", "20M", "-J"],
                      timeout=300).stdout
        server.wait(timeout=30)
        cap.stop()
        status = agent.status()
    finally:
        assert agent.stop() == 0, agent.output()
    session, counters = status["sessions"][0], status["counters"]
    report = {k: session[k] for k in ("gso", "packets", "fragments", "encap_fail")}
    report["gso_slow"] = counters["gso_slow"]
    if os.environ.get("BPFTAP_GSO_REPORT"):
        Path(os.environ["BPFTAP_GSO_REPORT"]).write_text(json.dumps(report) + "\n")
    got = received(out)
    data = max((d for (_, dst), d in flows(copies).items() if dst[1] == PORT),
               key=lambda d: sum(e - s for s, e in d.ranges))
    assert covers(data, got), report
    assert report["gso"] > 0 and report["encap_fail"] == 0, report
