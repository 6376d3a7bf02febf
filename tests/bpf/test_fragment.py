"""Copies over the egress MTU: the MTU decision at its edges, outer fragments, and truncation.

Each case runs mirror_encap (BPF_PROG_TEST_RUN) on a clone as stage 1 hands
it over. A copy that fits comes back as the redirected skb; one that does
not leaves as one clone per fragment across the internal pair (here the
test's veth k1, caught on its peer k0), which, run again with its
fragment mark, becomes its fragment.
The fragments must put the copy the Python codec predicts back together,
and each must fit the MTU.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from dataclasses import dataclass

import pytest

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject, SkBuff

from .conftest import KernelNs
from .test_tunnels_bytes import (
    NEXT_MAC,
    SRC_MAC,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    Case,
    clone_ctx,
    expected,
    hop,
    inner_frame,
    outer_of,
    program,
    receive_all,
    session,
)

pytestmark = pytest.mark.kernel

SO_RCVBUFFORCE = 33  # asm-generic; Python's socket module does not export it
# VXLAN's outer IP bytes before the inner frame: IP + UDP + VXLAN
OVERHEAD = {4: 20 + 8 + 8, 6: 40 + 8 + 8}


@dataclass(frozen=True)
class Edge:
    id: str
    family: int
    mtu: int
    inner: int  # inner frame bytes
    fragments: int  # 0: sent whole; -1: not sent (more than MAX_FRAGS)


@pytest.fixture(scope="module", autouse=True)
def internal_mtu(kernel_ns: KernelNs) -> None:
    """The veth pair stands in for bpftap0/bpftap1, whose MTU lets whole copies through."""
    for dev in ("k0", "k1"):
        subprocess.run(["ip", "link", "set", dev, "mtu", "65535"], check=True)


def fits(family: int, mtu: int) -> int:
    """The largest inner frame whose copy is exactly `mtu` bytes of outer IP."""
    return mtu - OVERHEAD[family]


EDGES = [
    *(Edge(f"v{f}-exactly-mtu", f, 1500, fits(f, 1500), 0) for f in (4, 6)),
    *(Edge(f"v{f}-mtu-plus-1", f, 1500, fits(f, 1500) + 1, 2) for f in (4, 6)),
    *(Edge(f"v{f}-minimum-frame", f, 1500, 60, 0) for f in (4, 6)),
    *(Edge(f"v{f}-3000-at-1500", f, 1500, 3000, 3) for f in (4, 6)),
    Edge("v6-3000-at-1280", 6, 1280, 3000, 3),
    *(Edge(f"v{f}-jumbo-mtu-9000", f, 9000, 3000, 0) for f in (4, 6)),
    # a 64 KiB frame over 1280 bytes needs 52 fragments; the limit, with a tiny MTU
    Edge("v4-max-fragments", 4, 68, 20 + 64 * 48 - OVERHEAD[4], abi.MAX_FRAGS),
    Edge("v4-over-max-fragments", 4, 68, 20 + 64 * 48 - OVERHEAD[4] + 1, -1),
]


def run_catching(obj: BpfObject, data: bytes, ctx: SkBuff) -> tuple[int, bytes, list[bytes]]:
    """Run stage 2 once: (verdict, the skb's bytes, the clones it sent back through k1 to be fragmented)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sniff:
        sniff.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # room for MAX_FRAGS whole copies
        sniff.bind(("k0", 0))
        result = obj.program(abi.PROG_ENCAP).test_run(data, ctx=ctx)
        back = [f for f in receive_all(sniff, 0.3) if f[:6] == NEXT_MAC]
    assert result.ctx is not None
    return result.retval, result.data, back


def cut(obj: BpfObject, key: int, clones: list[bytes], first: int) -> list[bytes]:
    """Each clone through stage 2 again with its fragment mark (from `first` on): the fragments as they leave."""
    out = []
    for i, clone in enumerate(clones, start=first):
        mark = abi.FRAG_TAG | key << abi.FRAG_SLOT_SHIFT | i
        verdict, fragment, back = run_catching(obj, clone, SkBuff(mark=mark))
        assert (verdict, back) == (TC_ACT_REDIRECT, []), f"fragment {i}"
        out.append(fragment)
    return out


def ipv4_sum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reassemble(family: int, fragments: list[bytes], mtu: int) -> tuple[bytes, bytes]:
    """(outer IP header as the fragments carry it, the payload put back together); asserts each fragment's form."""
    parts, idents = [], set()
    for i, f in enumerate(fragments):
        assert f[:12] == NEXT_MAC + SRC_MAC, f"fragment {i}: Ethernet addresses"
        assert len(f) - 14 <= mtu, f"fragment {i}: {len(f) - 14} bytes over MTU {mtu}"
        if family == 4:
            ip = f[14:34]
            ident, flags_off = struct.unpack("!HH", ip[4:8])
            assert ipv4_sum(ip) == 0xFFFF, f"fragment {i}: IPv4 header checksum"
            assert struct.unpack("!H", ip[2:4])[0] == len(f) - 14
            assert not flags_off & 0x4000, "DF set on a fragment"
            parts.append(((flags_off & 0x1FFF) * 8, bool(flags_off & 0x2000), f[34:]))
            head = ip
        else:
            ip, fh = f[14:54], f[54:62]
            assert ip[6] == 44 and struct.unpack("!H", ip[4:6])[0] == len(f) - 54
            nexthdr, _, off_m, ident = struct.unpack("!BBHI", fh)
            assert nexthdr == 17
            parts.append((off_m & 0xFFF8, bool(off_m & 1), f[62:]))
            head = ip
        idents.add(ident)
    assert len(idents) == 1, "fragments of one copy carry one identification"
    assert [p[1] for p in parts] == [True] * (len(parts) - 1) + [False], "MF on all but the last"
    payload = b""
    for off, _, data in sorted(parts):
        assert off == len(payload), "a gap or an overlap between fragments"
        assert len(data) % 8 == 0 or off == max(p[0] for p in parts)
        payload += data
    return head, payload


@pytest.mark.parametrize("edge", EDGES, ids=[e.id for e in EDGES])
def test_mtu_decision_at_the_edges(edge: Edge, loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    sess = session("vxlan", edge.family)
    cfg, slots = program(tables, kernel_ns, [sess])
    tables.write_session(slots[sess["name"]], cfg.sessions[0], hop(kernel_ns, edge.family, edge.mtu), live=True)
    inner = inner_frame(edge.inner)
    ctx = clone_ctx(tables)
    ctx.ifindex = kernel_ns.k1  # as if on bpftap1: fragments leave through it for its peer
    verdict, _, clones = run_catching(obj, inner, ctx)
    stats = tables.session_stats(sess["name"])
    if edge.fragments == -1:
        assert (verdict, clones, stats.oversize, stats.packets) == (TC_ACT_SHOT, [], 1, 0)
        return
    outer = outer_of(cfg, sess["name"])
    if edge.fragments == 0:
        assert (verdict, clones, stats.packets, stats.fragments) == (TC_ACT_REDIRECT, [], 1, 0)
        return
    # one clone per fragment crosses the pair, back to back; the skb itself is dropped
    assert verdict == TC_ACT_SHOT
    assert len(clones) == edge.fragments
    key = tables.config().active_slot * abi.MAX_SESSIONS + slots[sess["name"]]
    fragments = cut(obj, key, clones, 0)
    head, payload = reassemble(edge.family, fragments, edge.mtu)
    want = expected(outer, Case(edge.id, sess, edge.family, inner=inner), clones[0])
    l3 = 34 if edge.family == 4 else 54
    assert payload == want[l3:], "the fragments do not put the copy back together"
    if edge.family == 4:  # all but length, identification, flags and checksum as in an atomic copy
        assert (head[:2], head[8:10], head[12:]) == (want[14:16], want[22:24], want[26:34])
    else:
        assert (head[:4], head[8:]) == (want[14:18], want[22:54])
    stats = tables.session_stats(sess["name"])
    assert (stats.packets, stats.fragments, stats.oversize, stats.encap_fail) == (1, edge.fragments, 0, 0)
    assert tables.counters()["fragments"] == edge.fragments


def test_a_fragment_mark_naming_no_session_is_dropped_and_counted(loaded: tuple[BpfObject, Tables]) -> None:
    """A FRAG_TAG mark whose session key is past `sessions` (stale or forged): dropped, counted once as no_entry."""
    obj, tables = loaded
    key = abi.RULE_SLOTS * abi.MAX_SESSIONS  # the first key `sessions` does not have
    assert key <= abi.FRAG_SLOT_MASK >> abi.FRAG_SLOT_SHIFT
    ctx = SkBuff(mark=abi.FRAG_TAG | key << abi.FRAG_SLOT_SHIFT)
    result = obj.program(abi.PROG_ENCAP).test_run(inner_frame(100), ctx=ctx)
    assert result.retval == TC_ACT_SHOT
    assert {name: n for name, n in tables.counters().items() if n} == {"no_entry": 1}


def test_a_fragmented_copy_leaves_the_skb_to_the_next_session(loaded: tuple[BpfObject, Tables],
                                                              kernel_ns: KernelNs) -> None:
    """Two sessions: the first copy over its MTU goes as clones, the second whole, from the same skb."""
    obj, tables = loaded
    sessions = [session("gre", 4), session("vxlan", 4)]  # slots by header length: gre first
    cfg, slots = program(tables, kernel_ns, sessions)
    tables.write_session(slots["gre4"], cfg.sessions[0], hop(kernel_ns, 4, 1500), live=True)
    ctx = clone_ctx(tables)
    ctx.ifindex = kernel_ns.k1
    inner = inner_frame(3000)
    verdict, copy, clones = run_catching(obj, inner, ctx)
    assert verdict == TC_ACT_REDIRECT and len(copy) == 50 + len(inner), "the vxlan copy, whole"
    key = tables.config().active_slot * abi.MAX_SESSIONS + slots["gre4"]
    _, payload = reassemble(4, cut(obj, key, clones, 0), 1500)
    assert len(clones) == 3 and payload.endswith(inner)
    assert tables.session_stats("gre4").fragments == 3


def test_truncate_mode_cuts_the_copy_to_the_mtu(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """`oversize: truncate`: the daemon turns the MTU into the session's snaplen; the copy is exactly MTU long."""
    obj, tables = loaded
    for family in (4, 6):
        sess = session("vxlan", family, oversize="truncate")
        cfg, slots = program(tables, kernel_ns, [sess])
        tables.write_session(slots[sess["name"]], cfg.sessions[0], hop(kernel_ns, family, 1500), live=True)
        rule = tables.config().active_slot * abi.MAX_RULES
        mark = abi.XFER_TAG | (slots[sess["name"]] + 1) << abi.XFER_PASS_SHIFT | rule
        inner = inner_frame(3000)
        result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=SkBuff(mark=mark))
        assert result.retval == TC_ACT_REDIRECT
        assert len(result.data) == 14 + 1500
        keep = 1500 - OVERHEAD[family]
        assert result.data[-keep:] == inner[:keep]
        stats = tables.session_stats(sess["name"])
        assert (stats.packets, stats.truncated, stats.fragments) == (1, 1, 0)
