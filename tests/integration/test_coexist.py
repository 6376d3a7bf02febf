"""Issue 6 item 4: another vendor's TC program on the same hook keeps counting and dropping as without bpftap.

tests/bpf_progs/counter.bpf.c counts every packet on the tapped host's eth0
ingress and drops IPv4 UDP to one port (TC_ACT_SHOT), passing everything
else on. It is attached first (held by tests/bpf_progs/counter.py), then
bpftap joins the hook before or after it, in tcx (`--order first|last`) and
clsact (`--priority` below or above the counter's). The counter's counts and
its drops must equal those of a run without bpftap, and bpftap must still
mirror what reaches it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import (
    BPFTAP,
    Agent,
    hook_state,
    needs_mode,
    received,
    send_frames,
    sniffing,
)

HOLDER = Path(__file__).resolve().parents[1] / "bpf_progs" / "counter.py"
COUNTER_OBJ = Path(__file__).resolve().parents[2] / "build" / "bpf" / "counter.bpf.o"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
    pytest.mark.skipif(not COUNTER_OBJ.exists(), reason="no build/bpf/counter.bpf.o: run 'make build'"),
]

DROP_PORT = 7099
COUNTER_PRIORITY = 5
MARKER = b"bpftap coexistence "
CONFIG = """
sources:
  - {{interface: eth0, direction: ingress}}
sessions:
  - {{name: ids, remote: "{col4}", vni: 42}}
rules:
  - {{number: 20, protocol: udp, dst_ports: 7000-7100, sessions: [ids]}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


class Holder:
    """The other program, held on tap's eth0 ingress by tests/bpf_progs/counter.py."""

    def __init__(self, lab: Lab, mode: str) -> None:
        cmd = [sys.executable, str(HOLDER), "eth0", "--mode", mode, "--priority", str(COUNTER_PRIORITY),
               "--drop-port", str(DROP_PORT)]
        self.proc = lab.popen(lab.tap, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), f"counter.py did not attach: {line!r}"
        self.info: dict[str, Any] = json.loads(line.split(" ", 1)[1])

    def counts(self) -> Counter[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        return Counter(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


@contextmanager
def holding(lab: Lab, mode: str) -> Iterator[Holder]:
    holder = Holder(lab, mode)
    try:
        yield holder
    finally:
        holder.close()


def frames(lab: Lab) -> tuple[list[bytes], list[bytes]]:
    """(passed, dropped): IPv4 UDP frames from src to dst; the counter drops the second list."""
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    v4 = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4), ttl=64)
    passed = [bytes(l2 / v4 / UDP(sport=5000 + i, dport=7000) / Raw(MARKER * 4)) for i in range(14)]
    dropped = [bytes(l2 / v4 / UDP(sport=5100 + i, dport=DROP_PORT) / Raw(MARKER * 4)) for i in range(6)]
    return passed, dropped


def exchange(lab: Lab, holder: Holder, sent: list[bytes]) -> tuple[Counter[str], Counter[bytes]]:
    """Send `sent` from src; the counter's deltas and the marked frames that reached dst."""
    before = holder.counts()
    with sniffing(lab, [(lab.dst, "eth0")], seconds=1.5) as seen:
        send_frames(lab, lab.src, "eth0", sent)
    delta = holder.counts()
    delta.subtract(before)
    return delta, Counter(udp(f) for f in received(seen["dst.eth0"]) if MARKER in f)


def udp(frame: bytes) -> bytes:
    """The UDP header and payload of an untagged IPv4 frame: what routing through tap leaves unchanged."""
    return frame[14 + (frame[14] & 0xF) * 4 :]


def ingress_order(lab: Lab, mode: str) -> list[str]:
    """Program names on tap's eth0 ingress, in the order the kernel runs them."""
    if mode == "tcx":
        snippet = ("import json, socket; from bpftap.bpf import tc\n"
                   "print(json.dumps(tc.tcx_programs(socket.if_nametoindex('eth0'), tc.Direction.INGRESS)))")
        return [name for _, name in json.loads(lab.run(lab.tap, [sys.executable, "-c", snippet]).stdout)]
    shown = json.loads(lab.run(lab.tap, ["tc", "-j", "filter", "show", "dev", "eth0", "ingress"]).stdout)
    named = sorted((f["pref"], f["options"]["prog"]["name"]) for f in shown if "options" in f)
    return [name for _, name in named]


CASES = [
    ("tcx", "first", ["--attach", "tcx", "--order", "first"]),
    ("tcx", "last", ["--attach", "tcx", "--order", "last"]),
    ("tc", "first", ["--attach", "tc", "--priority", str(COUNTER_PRIORITY - 4)]),
    ("tc", "last", ["--attach", "tc", "--priority", str(COUNTER_PRIORITY + 5)]),
]


@pytest.mark.parametrize("mode,place,args", CASES, ids=[f"{m}-bpftap-{p}" for m, p, _ in CASES])
def test_other_program_counts_and_drops_as_without_bpftap(lab: Lab, mode: str, place: str, args: list[str]) -> None:
    needs_mode(mode)
    passed, dropped = frames(lab)
    sent = passed + dropped
    before = hook_state(lab)
    with holding(lab, mode) as holder:
        # `bpftap check` names what is there before bpftap is
        check = lab.run(lab.tap, [*BPFTAP, "check"]).stdout
        what = "tcx program counter_ingress" if mode == "tcx" else f"bpf filter prio {COUNTER_PRIORITY} counter_ingress"
        assert f"eth0 ingress: {what}" in check, check

        alone, at_dst_alone = exchange(lab, holder, sent)
        assert alone["udp4"] == len(sent) and alone["dropped"] == len(dropped)
        assert at_dst_alone == Counter(map(udp, passed)), "without bpftap: the counter's drops did not hold"

        agent = Agent(lab, CONFIG.format(col4=lab.col.ip4), *args)
        try:
            order = [n for n in ingress_order(lab, mode) if n in ("counter_ingress", abi.PROG_INGRESS)]
            want = ["counter_ingress", abi.PROG_INGRESS]
            assert order == (want[::-1] if place == "first" else want), f"bpftap --{args[2][2:]} {args[3]}: {order}"
            together, at_dst = exchange(lab, holder, sent)
            status = agent.status()
        finally:
            assert agent.stop() == 0

    # the other program saw every packet and its verdicts held, exactly as without bpftap
    assert together["udp4"] == alone["udp4"] == len(sent)
    assert together["dropped"] == alone["dropped"] == len(dropped)
    assert at_dst == at_dst_alone
    # bpftap still mirrors: ahead of the counter it sees (and copies) the frames the counter drops later
    copies = {s["name"]: s["packets"] for s in status["sessions"]}
    assert copies == {"ids": len(sent) if place == "first" else len(passed)}
    assert status["rules"][0]["packets"] == copies["ids"]
    # bpftap said what else it found on the hook
    assert "also on eth0 ingress: " + what in agent.output(), agent.output()
    assert hook_state(lab) == before, "bpftap or the counter left something behind"
