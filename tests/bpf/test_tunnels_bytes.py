"""Stage 2 builds the same bytes as the Python codecs, for every tunnel type, family and option.

Each case programs one or more sessions, runs mirror_encap through
BPF_PROG_TEST_RUN on a clone as stage 1 hands it over (the mark: rule,
direction and source id), and compares the copy with
`bpftap.tunnels.outer.encapsulate` for the same session and packet. The
flow hash is the kernel's (a keyed jhash): it is read back from the copy's
UDP source port or IPv6 flow label; every other byte is predicted,
checksums included.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject, SkBuff
from bpftap.compile.classifier import compile_rules
from bpftap.compile.slots import assign_session_slots
from bpftap.config import Config, parse_config
from bpftap.netlink import NextHop
from bpftap.tunnels import DECODERS, decode_gre
from bpftap.tunnels.outer import Outer, encapsulate

from .conftest import KernelNs

pytestmark = pytest.mark.kernel

TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
SRC_MAC, NEXT_MAC = b"\x02\x00\x00\x00\x02\xfe", b"\x02\x00\x00\x00\x02\x01"
LOCAL = {4: "198.18.2.254", 6: "2001:db8:2::fe"}
REMOTE = {4: "198.18.2.1", 6: "2001:db8:2::1"}
SOURCE_IFINDEX = 0x1234
TSTAMP = 1_700_000_123_456_789_012


def inner_frame(size: int = 100, tags: int = 0) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes before tags, with 0-2 VLAN tags in the frame."""
    l2: Any = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
    if tags == 2:
        l2 = l2 / Dot1AD(vlan=100, prio=3) / Dot1Q(vlan=7)
    elif tags == 1:
        l2 = l2 / Dot1Q(vlan=7, prio=5)
    head = IP(src="198.18.1.1", dst="198.18.3.1", id=1) / UDP(sport=4000, dport=7000)
    return bytes(l2 / head / Raw(b"b" * max(0, size - 42)))


@dataclass
class Case:
    """One session (and the packet options) under test."""

    id: str
    session: dict[str, Any]
    family: int
    inner: bytes = field(default_factory=inner_frame)
    egress: bool = False
    ifindex: int | None = SOURCE_IFINDEX
    tstamp: int = TSTAMP


def session(tunnel: str, family: int, **fields: Any) -> dict[str, Any]:
    defaults = {"vxlan": {"vni": 42}, "geneve": {"vni": 0xABCDE}, "gre": {}, "erspan2": {"session_id": 513},
                "erspan3": {"session_id": 1023}}[tunnel]
    return {"name": f"{tunnel}{family}", "tunnel": tunnel, "remote": REMOTE[family], **defaults, **fields}


CASES = [
    *(Case(f"vxlan-v{f}", session("vxlan", f), f) for f in (4, 6)),
    *(Case(f"vxlan-v{f}-port-8472", session("vxlan", f, port=8472, vni=0), f) for f in (4, 6)),
    *(Case(f"geneve-v{f}-{d}", session("geneve", f), f, egress=d == "egress") for f in (4, 6)
      for d in ("ingress", "egress")),
    *(Case(f"geneve-v{f}-no-source", session("geneve", f), f, ifindex=None) for f in (4, 6)),
    *(Case(f"gre-v{f}-{name}", session("gre", f, **opts), f) for f in (4, 6) for name, opts in (
        ("plain", {"sequence": False}), ("key", {"key": 0xDEADBEEF, "sequence": False}), ("seq", {}),
        ("key-seq", {"key": 7}))),
    *(Case(f"erspan2-v{f}-{t}tags", session("erspan2", f), f, inner=inner_frame(tags=t)) for f in (4, 6)
      for t in (0, 1, 2)),
    *(Case(f"erspan3-v{f}-{d}", session("erspan3", f), f, egress=d == "egress", inner=inner_frame(tags=1))
      for f in (4, 6) for d in ("ingress", "egress")),
    *(Case(f"erspan3-v{f}-no-platform", session("erspan3", f, platform_subheader=False), f) for f in (4, 6)),
    # the IPv6 UDP checksum runs over the inner frame in 512-byte chunks: odd tails, several chunks
    # (test runs take at most about a page of data; the lab test sends jumbo frames)
    *(Case(f"checksum-{t}-v6-{n}", session(t, 6), 6, inner=inner_frame(n)) for t in ("vxlan", "geneve")
      for n in (60, 61, 511, 512, 513, 1514, 2049, 3000)),
    *(Case(f"gre-v4-{n}", session("gre", 4, key=1), 4, inner=inner_frame(n)) for n in (61, 1514, 3000)),
]


def hop(ns: KernelNs, family: int, mtu: int = 9000) -> NextHop:
    return NextHop(ns.k0, "k0", ipaddress.ip_address(LOCAL[family]), SRC_MAC, NEXT_MAC, mtu)


def program(tables: Tables, ns: KernelNs, sessions: list[dict[str, Any]]) -> tuple[Config, dict[str, int]]:
    """Sessions as the agent writes them, and one rule (any packet) feeding them all."""
    raw = {"sources": [{"interface": "eth0"}], "sessions": sessions,
           "rules": [{"number": 10, "sessions": [s["name"] for s in sessions]}]}
    cfg = parse_config(raw, "test.yaml")
    slots = assign_session_slots(cfg.sessions)
    for sess in cfg.sessions:
        tables.write_session(slots[sess.name], sess, hop(ns, sess.remote.version))
    tables.write_rules(compile_rules(cfg, slots), ns.k1)
    return cfg, slots


def clone_ctx(tables: Tables, egress: bool = False, ifindex: int | None = SOURCE_IFINDEX,
              tstamp: int = TSTAMP) -> SkBuff:
    """The skb context of a clone from stage 1: rule position 0 of the live slot, the source's id."""
    key = tables.config().active_slot * abi.MAX_RULES
    sid = tables.write_sources([ifindex])[ifindex] if ifindex is not None else 0
    mark = abi.XFER_TAG | (abi.XFER_EGRESS if egress else 0) | sid << abi.XFER_SOURCE_SHIFT | key
    return SkBuff(mark=mark, tstamp=tstamp)


def outer_of(cfg: Config, name: str) -> Outer:
    sess = next(s for s in cfg.sessions if s.name == name)
    fam = sess.remote.version
    return Outer(sess.tunnel, SRC_MAC, NEXT_MAC, ipaddress.ip_address(LOCAL[fam]), sess.remote,
                 tun_id=sess.tun_id, dst_port=sess.port, gre_key=sess.gre_key, gre_seq=sess.gre_seq,
                 erspan_platform=sess.erspan_platform)


def kernel_hash(copy: bytes, outer: Outer) -> int:
    """The flow hash as far as the copy shows it: IPv6 flow label, else the UDP source port's bits."""
    if outer.family == 6:
        return int.from_bytes(copy[14:18], "big") & 0xFFFFF
    if outer.tunnel in ("vxlan", "geneve"):
        return int.from_bytes(copy[34:36], "big") - 49152
    return 0


def expected(outer: Outer, case: Case, copy: bytes, seq: int = 1) -> bytes:
    direction = abi.MirrorDir.EGRESS if case.egress else abi.MirrorDir.INGRESS
    return encapsulate(outer, case.inner, hash=kernel_hash(copy, outer), seq=seq, direction=int(direction),
                       ifindex=case.ifindex or 0, timestamp_ns=case.tstamp)


def diff(want: bytes, got: bytes) -> str:
    first = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    return (f"lengths {len(want)}/{len(got)}, first difference at byte {first}\n"
            f"want {want[:120].hex()}\ngot  {got[:120].hex()}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_copy_matches_python_codec(case: Case, loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns, [case.session])
    ctx = clone_ctx(tables, case.egress, case.ifindex, case.tstamp)
    result = obj.program(abi.PROG_ENCAP).test_run(case.inner, ctx=ctx)
    assert result.retval == TC_ACT_REDIRECT, tables.counters()
    outer = outer_of(cfg, case.session["name"])
    want = expected(outer, case, result.data)
    assert result.data == want, diff(want, result.data)
    assert len(result.data) == outer.header_len + len(case.inner)
    stats = tables.session_stats(case.session["name"])
    assert (stats.packets, stats.bytes, stats.encap_fail) == (1, len(result.data), 0)
    assert result.ctx is not None and result.ctx.mark == abi.MIRROR_COPY_MARK


def test_sequence_numbers_count_per_session(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns, [session("gre", 4, key=9)])
    outer = outer_of(cfg, "gre4")
    case = Case("seq", session("gre", 4), 4)
    for seq in range(1, 6):
        result = obj.program(abi.PROG_ENCAP).test_run(case.inner, ctx=clone_ctx(tables))
        assert result.data == expected(outer, case, result.data, seq=seq)
    assert tables.session_seq("gre4") == 5


def test_erspan3_without_receive_time_uses_the_realtime_clock(loaded: tuple[BpfObject, Tables],
                                                              kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    program(tables, kernel_ns, [session("erspan3", 4)])
    before = time.time_ns()
    result = obj.program(abi.PROG_ENCAP).test_run(inner_frame(), ctx=clone_ctx(tables, tstamp=0))
    after = time.time_ns()
    meta, inner = decode_gre(result.data[34:])
    assert inner == inner_frame()
    assert meta.timestamp_ns is not None and before - 10**6 <= meta.timestamp_ns <= after + 10**6


def test_source_ids_map_back_to_ifindexes(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    program(tables, kernel_ns, [session("geneve", 4)])
    assert tables.write_sources([7, 8, 9]) == {7: 1, 8: 2, 9: 3}
    assert tables.write_sources([9, 10]) == {9: 3, 10: 1}  # 9 keeps its id, 7's is reused
    key = tables.config().active_slot * abi.MAX_RULES
    for sid, want in ((3, 9), (1, 10), (2, None), (0, None), (abi.MAX_SOURCES - 1, None)):
        ctx = SkBuff(mark=abi.XFER_TAG | sid << abi.XFER_SOURCE_SHIFT | key, tstamp=TSTAMP)
        result = obj.program(abi.PROG_ENCAP).test_run(inner_frame(), ctx=ctx)
        meta, _ = DECODERS["geneve"](result.data[42:])
        assert (meta.ifindex, meta.direction) == (want, abi.MirrorDir.INGRESS), sid


def receive_all(sock: socket.socket, wait: float = 1.0) -> list[bytes]:
    frames, deadline = [], time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
        frames.append(sock.recv(65535))
    return frames


def test_one_packet_to_every_type_and_family(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """One rule, ten sessions (5 types x 2 families): nine clones out of k0, the last copy is the skb."""
    obj, tables = loaded
    sessions = [session(t, f) for f in (4, 6) for t in ("vxlan", "geneve", "gre", "erspan2", "erspan3")]
    cfg, slots = program(tables, kernel_ns, sessions)
    inner = inner_frame(300, tags=1)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sniff:
        sniff.bind(("k1", 0))
        result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=clone_ctx(tables, egress=True))
        # the copies only: the veth may also carry IPv6 neighbour discovery of its own
        clones = [f for f in receive_all(sniff) if f[6:12] == SRC_MAC]
    assert result.retval == TC_ACT_REDIRECT
    copies = [*clones, result.data]
    assert len(copies) == 10, f"{len(clones)} clones seen on k1"
    by_slot = sorted(cfg.sessions, key=lambda s: slots[s.name])
    case = Case("all", {}, 4, inner=inner, egress=True)
    for sess, copy in zip(by_slot, copies, strict=True):
        outer = outer_of(cfg, sess.name)
        assert copy == expected(outer, case, copy), f"{sess.name}: {diff(expected(outer, case, copy), copy)}"
    assert [tables.session_stats(s.name).packets for s in by_slot] == [1] * 10
    assert tables.counters()["copy_sent"] == 10


def test_unresolved_and_oversize_sessions_are_skipped(loaded: tuple[BpfObject, Tables],
                                                       kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    sessions = [session("gre", 4), session("erspan3", 6)]
    cfg, slots = program(tables, kernel_ns, sessions)
    tables.write_session(slots["gre4"], cfg.sessions[0], None, live=True)
    # an MTU with no room for an IPv6 fragment of 8 bytes: not even fragments fit
    tables.write_session(slots["erspan36"], cfg.sessions[1], hop(kernel_ns, 6, mtu=48 + 7), live=True)
    result = obj.program(abi.PROG_ENCAP).test_run(inner_frame(), ctx=clone_ctx(tables))
    assert result.retval == TC_ACT_SHOT
    assert tables.session_stats("gre4").unresolved == 1
    assert tables.session_stats("erspan36").oversize == 1
