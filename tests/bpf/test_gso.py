"""mirror_gso on bpftap0's egress: what is not a GSO session's super-packet goes on untouched.

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
from .test_tunnels_bytes import clone_ctx, program, session

pytestmark = pytest.mark.kernel

TC_ACT_OK = 0
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
    ("vxlan", {}, 1, 0, {}),  # not a super-packet: stage 1 gives GSO sessions no clone of their own then
    ("vxlan", {}, 0, 1448, {}),  # the whole-frame clone: mirror_encap's, per segment
    ("vxlan", {"gso": False}, 1, 1448, {}),  # not a GSO session
    ("erspan2", {}, 1, 1448, {}),  # per-packet sequence numbers: never a GSO session
    ("vxlan", {}, 1, 1448, {"gso_slow": 1}),  # adjust_room refuses: on to the per-segment path
    ("geneve", {}, 1, 1448, {"gso_slow": 1}),
    ("vxlan", {"sample": 2}, 1, 1448, {}),  # per-packet limits: not a GSO session
], ids=["not-gso", "pass-0", "gso-off", "erspan2", "vxlan-refused", "geneve-refused", "sampled"])
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
