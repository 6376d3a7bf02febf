"""mirror_gso on bpftap0's egress: a GSO session's frame is encapsulated there; what it cannot take goes on untouched.

BPF_PROG_TEST_RUN builds linear skbs: it can set gso_size and gso_segs but
no GSO type, so `bpf_skb_adjust_room` refuses such a "super-packet" as it
refuses any GSO type it cannot encapsulate (UDP, SCTP). What these rows pin
down is the fallback: the clone goes on into bpftap0 exactly as it came,
which segments it for stage 2 (the per-segment path), counted `gso_slow`.
Real super-packets run in the lab (tests/integration/test_big_packets.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject

from .conftest import KernelNs
from .test_tunnels_bytes import Case, clone_ctx, diff, expected, hop, outer_of, program, session

pytestmark = pytest.mark.kernel

TC_ACT_OK = 0
TC_ACT_REDIRECT = 7
FRAME = bytes(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / IP(src="198.18.1.1", dst="198.18.3.1")
              / TCP(sport=40000, dport=5201, flags="A") / Raw(b"t" * 2896))


def run(obj: BpfObject, tables: Tables, pass_: int, gso_size: int) -> tuple[Any, dict[str, int]]:
    ctx = clone_ctx(tables)
    ctx.mark |= pass_ << abi.XFER_PASS_SHIFT
    ctx.gso_size, ctx.gso_segs = gso_size, (len(FRAME) - 66 + gso_size - 1) // gso_size if gso_size else 0
    before = tables.counters()
    res = obj.program(abi.PROG_GSO).test_run(FRAME, ctx=ctx)
    after = tables.counters()
    return res, {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.mark.parametrize(("tunnel", "fields", "pass_", "gso_size", "counted"), [
    ("vxlan", {}, 0, 1448, {}),  # the whole-frame clone: mirror_encap's, per segment
    ("vxlan", {"gso": False}, 1, 1448, {}),  # not a GSO session
    ("erspan2", {}, 1, 1448, {}),  # per-packet sequence numbers: never a GSO session
    ("vxlan", {}, 1, 1448, {"gso_slow": 1}),  # adjust_room refuses: on to the per-segment path
    ("geneve", {}, 1, 1448, {"gso_slow": 1}),
    ("vxlan", {"sample": 2}, 1, 1448, {}),  # per-packet limits: not a GSO session
], ids=["pass-0", "gso-off", "erspan2", "vxlan-refused", "geneve-refused", "sampled"])
def test_everything_else_goes_on_untouched(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs, tunnel: str,
                                           fields: dict[str, Any], pass_: int, gso_size: int,
                                           counted: dict[str, int]) -> None:
    obj, tables = loaded
    program(tables, kernel_ns, [session(tunnel, 4, **fields)])
    res, delta = run(obj, tables, pass_, gso_size)
    assert res.retval == TC_ACT_OK
    assert res.data == FRAME
    assert res.ctx is not None and res.ctx.mark == clone_ctx(tables).mark | pass_ << abi.XFER_PASS_SHIFT
    assert delta == counted


@pytest.mark.parametrize(("tunnel", "family", "fields"), [
    ("vxlan", 4, {}), ("vxlan", 6, {}), ("geneve", 4, {}), ("geneve", 6, {}), ("gre", 4, {"sequence": False}),
    ("gre", 6, {"key": 7, "sequence": False}),
], ids=["vxlan-v4", "vxlan-v6", "geneve-v4", "geneve-v6", "gre-v4", "gre-v6-key"])
def test_a_tcp_frame_is_encapsulated_here(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs, tunnel: str,
                                          family: int, fields: dict[str, Any]) -> None:
    """Stage 1 gives a GSO session a clone of its own of a TCP flow's frames too (they skip the internal pair
    as the flow's super-packets do): the bytes stage 2 would write, except that the UDP checksum over IPv6 is
    zero, as on every segment of a super-packet's copy."""
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns, [session(tunnel, family, **fields)])
    res, delta = run(obj, tables, 1, 0)
    assert res.retval == TC_ACT_REDIRECT, delta
    assert res.ctx is not None and res.ctx.mark == abi.MIRROR_COPY_MARK
    outer = outer_of(cfg, cfg.sessions[0].name)
    want = expected(outer, Case("frame", {}, family, inner=FRAME), res.data)
    if family == 6 and tunnel != "gre":
        want = want[:60] + b"\0\0" + want[62:]
    assert res.data == want, diff(want, res.data)
    stats = tables.session_stats(cfg.sessions[0].name)
    assert (stats.packets, stats.bytes, stats.gso) == (1, len(want), 0)
    assert delta == {"copy_sent": 1}


def test_a_frame_over_the_mtu_goes_on_to_be_fragmented(loaded: tuple[BpfObject, Tables],
                                                       kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, slots = program(tables, kernel_ns, [session("vxlan", 4)])
    tables.write_session(slots["vxlan4"], cfg.sessions[0], hop(kernel_ns, 4, mtu=1500), live=True)
    res, delta = run(obj, tables, 1, 0)
    assert (res.retval, res.data, delta) == (TC_ACT_OK, FRAME, {})
