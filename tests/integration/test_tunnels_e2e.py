"""End to end on the lab: every tunnel type over IPv4 and IPv6, to bpftap's collector, tshark and kernel receivers.

Crafted frames go from the source host through the tapped host's eth0,
where bpftap mirrors them to sessions on the collector host. There:
- `bpftap collect` writes the inner frames, which must be the originals
  byte for byte, with the right metadata in each comment;
- tshark dissects the outer frames as it captured them on the collector's
  eth0: the right protocol chain and fields for each type and family, no
  expert info at all (malformed packets, bad checksums with validation on);
- the kernel's own devices decapsulate where this kernel has them (VXLAN
  here; the other types skip, naming the missing receiver).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.collector.pcapng import PcapngWriter, read_pcapng
from bpftap.lab import Lab
from bpftap.tunnels import DECODERS, decode_gre

from .agent_lab import BPFTAP, Agent, received, send_frames, sniffing

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

TYPES = ("vxlan", "geneve", "gre", "erspan2", "erspan3")
IDS = {"vxlan": ("vni", 40), "geneve": ("vni", 50), "gre": ("key", 60), "erspan2": ("session_id", 70),
       "erspan3": ("session_id", 80)}
MARKER = b"bpftap tunnels "
CHECKSUMS = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
# what tshark must see, per type: the protocol chain up to the inner Ethernet, and fields
CHAINS = {"vxlan": "udp:vxlan:eth", "geneve": "udp:geneve:eth", "gre": "gre:eth", "erspan2": "gre:erspan:eth",
          "erspan3": "gre:erspan:eth"}


def session(tunnel: str, family: int, remote: object) -> str:
    field, base = IDS[tunnel]
    return f'  - {{name: {tunnel}{family}, tunnel: {tunnel}, remote: "{remote}", {field}: {base + family}}}\n'


def config(lab: Lab, sessions: list[tuple[str, int]]) -> str:
    remote = {4: lab.col.ip4, 6: lab.col.ip6}
    names = ", ".join(f"{t}{f}" for t, f in sessions)
    return ("sources:\n  - interface: eth0\nsessions:\n" + "".join(session(t, f, remote[f]) for t, f in sessions)
            + f"rules:\n  - {{number: 10, protocol: udp, dst_ports: 7000, sessions: [{names}]}}\n")


def frames(lab: Lab) -> list[bytes]:
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    v4 = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4), id=7)
    v6 = IPv6(src=str(lab.src.ip6), dst=str(lab.dst.ip6))
    return [
        bytes(l2 / v4 / UDP(sport=6000, dport=7000) / Raw(MARKER * 4)),
        bytes(l2 / v4 / UDP(sport=6001, dport=7000) / Raw(MARKER * 90)),  # a full 1500-byte frame
        bytes(l2 / v6 / UDP(sport=6002, dport=7000) / Raw(MARKER * 3 + b"odd")),
        bytes(l2 / Dot1Q(vlan=7, prio=5) / v4 / UDP(sport=6003, dport=7000) / Raw(MARKER * 2)),
    ]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def tap_ifindex(lab: Lab) -> int:
    return int(lab.run(lab.tap, ["cat", "/sys/class/net/eth0/ifindex"]).stdout)


def tshark(pcap: Path, *args: str) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(pcap), *CHECKSUMS, *args], capture_output=True, text=True, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def start_collector(lab: Lab, out: Path) -> subprocess.Popen[str]:
    proc = lab.popen(lab.col, [*BPFTAP, "collect", "--listen", "[::]", "--out", str(out)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on" in line and "(gre, erspan2, erspan3)" in line, line
    return proc


def test_every_type_and_family_to_collector_and_tshark(lab: Lab, tmp_path: Path) -> None:
    sent = frames(lab)
    cases = [(t, f) for f in (4, 6) for t in TYPES]
    collected = tmp_path / "collected.pcapng"
    collector = start_collector(lab, collected)
    try:
        agent = Agent(lab, config(lab, cases))
        try:
            with sniffing(lab, [(lab.col, "eth0")]) as seen:
                send_frames(lab, lab.src, "eth0", sent)
            status = agent.status()
        finally:
            assert agent.stop() == 0
    finally:
        collector.send_signal(signal.SIGINT)
        summary, _ = collector.communicate(timeout=15)
    assert {s["name"]: s["packets"] for s in status["sessions"]} == {f"{t}{f}": len(sent) for t, f in cases}

    # bpftap's collector: per type and family, the originals byte for byte, and the metadata
    ifindex = tap_ifindex(lab)
    got: dict[tuple[str, int], Counter[bytes]] = {}
    for _, frame, comment in read_pcapng(collected):
        assert comment is not None
        fields = dict(part.split("=", 1) for part in comment.split())
        sender = fields["from"]  # ADDR:PORT, [V6ADDR]:PORT, or ADDR for GRE
        family = 6 if sender.startswith("[") or sender.count(":") > 1 else 4
        got.setdefault((fields["tunnel"], family), Counter())[frame] += 1
        field, base = IDS[fields["tunnel"]]
        assert fields[{"session_id": "session"}.get(field, field)] == str(base + family), comment
        if fields["tunnel"] in ("geneve", "gre", "erspan2", "erspan3"):
            assert fields["seq"] in {str(i) for i in range(1, len(sent) + 1)}, comment
        if fields["tunnel"] in ("geneve", "erspan3"):
            assert fields["dir"] == "ingress", comment
        # the source interface, where stage 1 hands it over (else the header says "unknown")
        if "if" in fields:
            assert int(fields["if"]) == ifindex & {"erspan2": 0xFFFFF, "erspan3": 0x3FFF}.get(fields["tunnel"], ~0)
    assert got == {case: Counter(sent) for case in cases}, summary
    assert "lost:       none" in summary and "malformed:  none" in summary, summary

    # tshark on the wire: each type and family dissected, inner frames whole, no expert info at all
    outer = tmp_path / "outer.pcapng"
    with PcapngWriter(outer) as writer:
        for _, frame in seen["col.eth0"]:
            writer.write(frame, 0)
    rows = tshark(outer, "-T", "fields", "-E", "occurrence=f", "-e", "frame.protocols", "-e", "_ws.expert",
                  "-e", "_ws.malformed", "-e", "vxlan.vni", "-e", "geneve.vni", "-e", "gre.key", "-e", "erspan.version",
                  "-e", "erspan.spanid", "-e", "erspan.direction", "-e", "erspan.gra", "-e", "udp.checksum.status")
    dissected: Counter[tuple[str, int, str]] = Counter()
    for protocols, expert, malformed, vni, gvni, key, version, span, direction, gra, udp_status in rows:
        if ":udp:" not in protocols and ":gre:" not in protocols:
            continue  # neighbour discovery and the like
        assert not expert and not malformed, protocols
        family = 6 if protocols.startswith("eth:ethertype:ipv6") else 4
        tunnel = next(t for t in TYPES if CHAINS[t] in protocols and (t not in ("gre", "erspan2", "erspan3")
                      or {"gre": "", "erspan2": "1", "erspan3": "2"}[t] == version))
        ident = {"vxlan": vni, "geneve": str(int(gvni, 0)) if gvni else "", "gre": str(int(key, 0)) if key else "",
                 "erspan2": span, "erspan3": span}[tunnel]
        assert ident == str(IDS[tunnel][1] + family), (tunnel, family, protocols, ident)
        if tunnel == "erspan3":
            assert (direction, gra) == ("0", "2")
        if tunnel in ("vxlan", "geneve"):
            checksum = "3" if family == 4 else "1"
            assert udp_status.split(",")[0] == checksum, "outer UDP: zero over IPv4, good over IPv6"
        # the inner frame dissects whole: Ethernet (with its tag), IP, UDP, payload
        dissected[(tunnel, family, protocols.split(CHAINS[tunnel], 1)[1])] += 1
    want = Counter({":ethertype:ip:udp:data": 2, ":ethertype:ipv6:udp:data": 1,
                    ":ethertype:vlan:ethertype:ip:udp:data": 1})
    for tunnel, family in cases:
        chains = Counter({c: n for (t, f, c), n in dissected.items() if (t, f) == (tunnel, family)})
        assert chains == want, (tunnel, family, chains)
    expert = [" ".join(row) for row in tshark(outer, "-q", "-z", "expert")]
    assert not [line for line in expert if line.split(" (")[0] in ("Errors", "Warnings", "Notes")], expert


RECEIVERS = {
    # type -> (kernel link type per family, its arguments); {col}, {tap} are the endpoints' addresses
    "vxlan": ({4: "vxlan", 6: "vxlan"}, "id {id} dstport 4789 local {col} nolearning"),
    "geneve": ({4: "geneve", 6: "geneve"}, "id {id} remote {tap}"),
    "gre": ({4: "gretap", 6: "ip6gretap"}, "local {col} remote {tap} key {id}"),
    "erspan2": ({4: "erspan", 6: "ip6erspan"}, "local {col} remote {tap} seq key {id} erspan_ver 1"),
    "erspan3": ({4: "erspan", 6: "ip6erspan"}, "local {col} remote {tap} seq key {id} erspan_ver 2"),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("tunnel", TYPES)
def test_kernel_receiver_decapsulates(lab: Lab, tunnel: str, family: int) -> None:
    """Linux's own devices decapsulate every type (ERSPAN III without the platform sub-header, which Linux ignores)."""
    kinds, args = RECEIVERS[tunnel]
    kind = kinds[family]
    addr = {4: (lab.col.ip4, lab.tap.eth2.ip4), 6: (lab.col.ip6, lab.tap.eth2.ip6)}[family]
    spec = args.format(id=IDS[tunnel][1] + family, col=addr[0], tap=addr[1]).split()
    made = lab.run(lab.col, ["ip", "link", "add", "rx0", "type", kind, *spec], check=False)
    if made.returncode:
        pytest.skip(f"this kernel has no {kind} receiver: `ip link add rx0 type {kind}` failed: "
                    f"{made.stderr.strip()}")
    try:
        lab.run(lab.col, ["sysctl", "-qw", "net.ipv6.conf.rx0.disable_ipv6=1"])
        lab.run(lab.col, ["ip", "link", "set", "rx0", "up"])
        sent = frames(lab)
        text = config(lab, [(tunnel, family)])
        if tunnel == "erspan3":
            text = text.replace("}\n", ", platform_subheader: false}\n", 1)
        agent = Agent(lab, text)
        try:
            with sniffing(lab, [(lab.col, "rx0")]) as seen:
                send_frames(lab, lab.src, "eth0", sent)
        finally:
            assert agent.stop() == 0
        assert received(seen["col.rx0"]) == Counter(sent), f"{kind} over IPv{family}: frames differ"
    finally:
        lab.run(lab.col, ["ip", "link", "del", "rx0"], check=False)


def test_one_packet_five_types_five_copies(lab: Lab) -> None:
    """One rule feeding five sessions of five types: five copies of one packet, each decapsulating to it."""
    packet = frames(lab)[3]
    agent = Agent(lab, config(lab, [(t, 4) for t in TYPES]))
    try:
        with sniffing(lab, [(lab.col, "eth0")]) as seen:
            send_frames(lab, lab.src, "eth0", [packet])
    finally:
        assert agent.stop() == 0
    copies = [f for out, f in seen["col.eth0"] if not out and f[12:14] == b"\x08\x00"]
    assert len(copies) == 5, [c[:64].hex() for c in copies]
    decoded = {}
    for copy in copies:
        ihl = (copy[14] & 0xF) * 4
        payload = copy[14 + ihl:]
        meta, inner = (DECODERS["vxlan" if payload[2:4] == b"\x12\xb5" else "geneve"](payload[8:])
                       if copy[23] == 17 else decode_gre(payload))
        decoded[meta.tunnel] = (meta.id, inner)
    assert decoded == {t: (IDS[t][1] + 4, packet) for t in TYPES}


def test_collector_cli_help_names_every_type() -> None:
    out = subprocess.run([sys.executable, "-m", "bpftap.cli", "collect", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for tunnel in TYPES:
        assert tunnel in out
