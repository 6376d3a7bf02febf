"""redirect_chain off: stage 2 redirects nothing; the copies wait in `copies`, byte for byte what redirecting sends.

The same clone runs through mirror_encap (BPF_PROG_TEST_RUN) with the switch
on and off; with it off the program drops the skb (no redirect), and the ring
buffer holds each session's copy with its egress ifindex, equal to the copy
redirect mode sends. The daemon's sender then puts them on the wire.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterator

import pytest

from bpftap import abi
from bpftap.agent.copies import CopySender
from bpftap.agent.kernel_log import RingReader
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject

from .conftest import KernelNs
from .test_tunnels_bytes import (
    SRC_MAC,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    Case,
    clone_ctx,
    diff,
    expected,
    hop,
    inner_frame,
    outer_of,
    program,
    receive_all,
    session,
)

pytestmark = pytest.mark.kernel


class Records(RingReader):
    """What `copies` holds: (ifindex, copy) per record."""

    def __init__(self, obj: BpfObject) -> None:
        super().__init__(obj.map(abi.MAP_COPIES), "test-copies")
        self.got: list[tuple[int, bytes]] = []

    def _sample(self, data: int, size: int) -> int:
        ifindex, length = struct.unpack("=II", ctypes.string_at(data, abi.COPY_HDR_LEN))
        assert size == abi.COPY_HDR_LEN + length
        self.got.append((ifindex, ctypes.string_at(data + abi.COPY_HDR_LEN, length)))
        return 0

    def take(self) -> list[tuple[int, bytes]]:
        self.drain()
        got, self.got = self.got, []
        return got


@pytest.fixture()
def records(loaded: tuple[BpfObject, Tables]) -> Iterator[Records]:
    reader = Records(loaded[0])
    yield reader
    reader.close()


CASES = [
    Case("vxlan-v4", session("vxlan", 4), 4),
    Case("geneve-v6", session("geneve", 6), 6, inner=inner_frame(2049)),
    Case("gre-v4-key-seq", session("gre", 4, key=7), 4),
    Case("erspan2-v6-tags", session("erspan2", 6), 6, inner=inner_frame(tags=2)),
    Case("erspan3-v4-egress", session("erspan3", 4), 4, egress=True, inner=inner_frame(tags=1)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ring_holds_the_copy_redirect_mode_sends(case: Case, loaded: tuple[BpfObject, Tables],
                                                 kernel_ns: KernelNs, records: Records) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns, [case.session])
    outer = outer_of(cfg, case.session["name"])
    prog = obj.program(abi.PROG_ENCAP)
    redirected = prog.test_run(case.inner, ctx=clone_ctx(tables, case.egress, case.ifindex, case.tstamp))
    assert redirected.retval == TC_ACT_REDIRECT
    assert records.take() == []
    tables.set_redirect_chain(False)
    held = prog.test_run(case.inner, ctx=clone_ctx(tables, case.egress, case.ifindex, case.tstamp))
    assert held.retval == TC_ACT_SHOT, tables.counters()
    [(ifindex, copy)] = records.take()
    assert ifindex == kernel_ns.k0
    # the second copy of a session with sequence numbers has the next one; all else is the same
    assert redirected.data == expected(outer, case, redirected.data, seq=1)
    want = expected(outer, case, copy, seq=2)
    assert copy == want, diff(want, copy)
    if case.session["tunnel"] == "vxlan":
        assert copy == redirected.data
    stats = tables.session_stats(case.session["name"])
    assert (stats.packets, stats.bytes, stats.ring_full) == (2, 2 * len(copy), 0)


def test_no_clone_leaves_and_the_sender_sends_them(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """Ten sessions: nothing redirected out of k0 by the program; the sender puts the ten copies on k0."""
    obj, tables = loaded
    sessions = [session(t, f) for f in (4, 6) for t in ("vxlan", "geneve", "gre", "erspan2", "erspan3")]
    cfg, slots = program(tables, kernel_ns, sessions)
    tables.set_redirect_chain(False)
    inner = inner_frame(300, tags=1)
    sender = CopySender(obj.map(abi.MAP_COPIES))
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sniff:
            sniff.bind(("k1", 0))
            result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=clone_ctx(tables, egress=True))
            assert result.retval == TC_ACT_SHOT
            assert [f for f in receive_all(sniff, 0.3) if f[6:12] == SRC_MAC] == []
            sender.drain()
            copies = [f for f in receive_all(sniff) if f[6:12] == SRC_MAC]
    finally:
        sender.close()
    assert (sender.sent, sender.failed) == (10, 0)
    by_slot = sorted(cfg.sessions, key=lambda s: slots[s.name])
    case = Case("all", {}, 4, inner=inner, egress=True)
    for sess, copy in zip(by_slot, copies, strict=True):
        want = expected(outer_of(cfg, sess.name), case, copy)
        assert copy == want, f"{sess.name}: {diff(want, copy)}"
    assert tables.counters()["copy_sent"] == 10


def test_over_the_mtu_is_oversize_and_a_full_ring_is_counted(loaded: tuple[BpfObject, Tables],
                                                             kernel_ns: KernelNs, records: Records) -> None:
    obj, tables = loaded
    cfg, slots = program(tables, kernel_ns, [session("vxlan", 4)])
    tables.set_redirect_chain(False)
    prog = obj.program(abi.PROG_ENCAP)
    # redirect mode would send this as two outer fragments; here it is not sent
    tables.write_session(slots["vxlan4"], cfg.sessions[0], hop(kernel_ns, 4, mtu=1500), live=True)
    assert prog.test_run(inner_frame(2000), ctx=clone_ctx(tables)).retval == TC_ACT_SHOT
    assert records.take() == []
    assert tables.session_stats("vxlan4").oversize == 1
    # nobody reads: the 4 MiB fill up with 3 kB copies
    tables.write_session(slots["vxlan4"], cfg.sessions[0], hop(kernel_ns, 4), live=True)
    runs = abi.COPIES_BYTES // 3000 + 100
    for _ in range(runs):
        prog.test_run(inner_frame(3000), ctx=clone_ctx(tables))
    stats = tables.session_stats("vxlan4")
    assert stats.ring_full > 0 and stats.packets + stats.ring_full == runs
    assert tables.counters()["ring_full"] == stats.ring_full
    assert len(records.take()) == stats.packets
