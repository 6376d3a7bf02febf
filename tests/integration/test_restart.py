"""Issue 6, restart without a gap: pinned maps and links, adoption after kill -9, --upgrade, host-wide detach.

The agents here run in the tapped host's network namespace with the host's
mounts (`nsenter --net`), so their pins live in the host's bpffs, under a
pin root and state directory of the test's own (PinScope). A UDP stream
with a sequence number in every datagram runs from src to dst through the
tapped host's eth0 while agents are killed, restarted and upgraded: every
datagram must reach dst, and the copies at the collector (the kernel's VXLAN
device) show which ones were mirrored.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import (
    BPFTAP,
    Agent,
    PinScope,
    hook_state,
    in_tap,
    needs_mode,
    send_frames,
    sniffing,
)
from .test_coexist import COUNTER_OBJ, frames, holding

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

DEBUG_OBJ = Path(__file__).resolve().parents[2] / "build" / "bpf" / "mirror_tc.debug.bpf.o"
CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: ids, remote: "{col4}", vni: 42}}
rules:
  - {{number: 20, protocol: udp, dst_ports: 7000, sessions: [ids]}}
"""
PORT = 7000
RATE = 200  # datagrams a second
SEQ = re.compile(rb"bpftap seq (\d{8})")

SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
count, gap, due = int(sys.argv[2]), 1 / float(sys.argv[3]), time.monotonic()
for i in range(count):
    sock.sendto(b"bpftap seq %08d" % i, (sys.argv[1], int(sys.argv[4])))
    due += gap
    time.sleep(max(0.0, due - time.monotonic()))
"""
RECEIVER = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
print("ready", flush=True)
seen = []
try:
    while True:
        seen.append(int(sock.recv(256)[11:19]))
except TimeoutError:
    pass
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.run(lab.col, ["ip", "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789",
                          "local", str(lab.col.ip4), "nolearning"])
        lab.run(lab.col, ["sysctl", "-qw", "net.ipv6.conf.vx42.disable_ipv6=1"])
        lab.run(lab.col, ["ip", "link", "set", "vx42", "up"])
        yield lab


@pytest.fixture
def scope(lab: Lab) -> Iterator[PinScope]:
    pins = PinScope()
    yield pins
    pins.close(lab)


def config(lab: Lab) -> str:
    return CONFIG.format(col4=lab.col.ip4)


class Stream:
    """`count` sequenced datagrams src -> dst at RATE a second; the copies seen at the collector meanwhile."""

    def __init__(self, lab: Lab, seconds: float) -> None:
        self.lab, self.count = lab, int(seconds * RATE)
        self.receiver = lab.popen(lab.dst, [sys.executable, "-c", RECEIVER, str(PORT), "3"],
                                  stdout=subprocess.PIPE, text=True)
        assert self.receiver.stdout is not None and self.receiver.stdout.readline().strip() == "ready"
        self.sniff = sniffing(lab, [(lab.col, "vx42")], seconds=seconds + 3)
        self.copies = self.sniff.__enter__()
        self.sender = lab.popen(lab.src, [sys.executable, "-c", SENDER, str(lab.dst.ip4), str(self.count),
                                          str(RATE), str(PORT)])

    def finish(self) -> tuple[list[int], list[int]]:
        """(sequence numbers that reached dst, those copied to the collector), once the stream is over."""
        assert self.sender.wait(timeout=60) == 0
        out, _ = self.receiver.communicate(timeout=30)
        self.sniff.__exit__(None, None, None)
        copied = [int(m.group(1)) for out_, frame in self.copies["col.vx42"] if not out_
                  for m in [SEQ.search(frame)] if m]
        return json.loads(out.splitlines()[-1]), copied


def prog_ids(lab: Lab) -> dict[str, list[int]]:
    """Program ids on eth0's hooks (tcx links and clsact filters), by direction."""
    snippet = (
        "import json, socket\n"
        "from bpftap.bpf import tc\n"
        "i = socket.if_nametoindex('eth0')\n"
        "print(json.dumps({d.value: [p for p, _ in tc.tcx_programs(i, d) or []]"
        " + [f.prog_id for f in tc.tc_filters('eth0', d) if f.ours] for d in tc.Direction}))"
    )
    data: dict[str, list[int]] = json.loads(lab.run(lab.tap, [sys.executable, "-c", snippet]).stdout)
    return data


def session_packets(status: dict[str, Any]) -> int:
    return int(next(s["packets"] for s in status["sessions"] if s["name"] == "ids"))


@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_kill_9_mirroring_goes_on_from_the_pins_and_the_next_run_adopts(lab: Lab, scope: PinScope, mode: str) -> None:
    """Nothing is detached between kill -9 and the next run: every datagram arrives, copies keep coming."""
    needs_mode(mode)
    before = hook_state(lab)
    first = Agent(lab, config(lab), "--attach", mode, pins=scope)
    stream = Stream(lab, seconds=8)
    time.sleep(1.5)
    counted = session_packets(first.status())
    assert counted > 0
    first.stop(signal.SIGKILL)
    ids_while_dead = prog_ids(lab)
    time.sleep(1.5)  # no agent runs: the pinned links (tcx) or the filters (clsact) keep mirroring
    assert any(scope.root.iterdir()), "no pins after kill -9"
    second = Agent(lab, config(lab), "--attach", mode, pins=scope)
    status = second.status()
    received, copied = stream.finish()
    status_after, ids_adopted = second.status(), prog_ids(lab)
    assert second.stop() == 0
    assert "adopting the pins" in second.output() and "detached " not in second.output()
    assert status["adopted"]["programs"] == "kept" and status["adopted"]["attachments"] >= 3
    assert status["adopted"]["maps"] > 10
    assert prog_ids(lab) == {"ingress": [], "egress": []}
    # the same programs stayed attached throughout; the counters went on (a reset would count fewer than arrived)
    assert ids_adopted == ids_while_dead and all(ids_while_dead.values())
    assert session_packets(status_after) >= len(set(copied)) > counted
    # no datagram of the flow lost; copies of the restart window may be missing, and are counted here
    assert sorted(received) == list(range(stream.count))
    missing = stream.count - len(set(copied))
    print(f"{mode}: {stream.count} sent, {len(received)} received, {len(set(copied))} copied, {missing} copies missing")
    assert missing <= RATE // 10, f"{missing} copies missing"
    assert hook_state(lab) == before
    assert not scope.root.exists() and not list(scope.state.glob("*.json"))



@pytest.mark.skipif(not DEBUG_OBJ.exists(), reason="no build/bpf/mirror_tc.debug.bpf.o: run 'make build'")
@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_upgrade_swaps_the_programs_in_one_step_and_keeps_the_maps(lab: Lab, scope: PinScope, mode: str) -> None:
    """A handover (--keep-attached, SIGTERM) to `run --upgrade` with another build: new programs, same maps."""
    needs_mode(mode)
    before = hook_state(lab)
    first = Agent(lab, config(lab), "--attach", mode, "--keep-attached", pins=scope)
    stream = Stream(lab, seconds=8)
    time.sleep(1.5)
    counted, old_ids = session_packets(first.status()), prog_ids(lab)
    assert first.stop() == 0
    assert "left attached and pinned" in first.output()
    second = Agent(lab, config(lab), "--attach", mode, "--upgrade", "--object", str(DEBUG_OBJ), pins=scope)
    status, new_ids = second.status(), prog_ids(lab)
    received, copied = stream.finish()
    status_after = second.status()
    assert second.stop() == 0
    assert status["adopted"]["programs"] == "replaced"
    assert "upgraded mirror_ingress on eth0" in second.output() and "attached mirror" not in second.output()
    # one program of the new build on each hook, where one of the old build was
    for direction in ("ingress", "egress"):
        assert len(new_ids[direction]) == len(old_ids[direction]) == 1
        assert new_ids[direction] != old_ids[direction]
    assert sorted(received) == list(range(stream.count))
    missing = stream.count - len(set(copied))
    print(f"{mode} upgrade: {stream.count} sent, {len(received)} received, {len(set(copied))} copied, "
          f"{missing} missing")
    assert missing <= RATE // 10, f"{missing} copies missing"
    assert session_packets(status_after) >= len(set(copied)) > counted, "the maps (and counters) were not kept"
    assert hook_state(lab) == before
    assert not scope.root.exists()


@pytest.mark.skipif(not COUNTER_OBJ.exists(), reason="no build/bpf/counter.bpf.o: run 'make build'")
@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_detach_removes_all_of_bpftap_and_nothing_else(lab: Lab, scope: PinScope, mode: str) -> None:
    """`bpftap detach` after kill -9: pins, links, filters, internal pair gone; a foreign program stays and works."""
    needs_mode(mode)
    before = hook_state(lab)
    with holding(lab, mode) as holder:
        with_holder = hook_state(lab)
        agent = Agent(lab, config(lab), "--attach", mode, pins=scope)
        refused = scope.detach(lab)
        assert refused.returncode == 1 and "agent pid " in refused.stderr and "is running" in refused.stderr
        agent.stop(signal.SIGKILL)
        assert hook_state(lab) != with_holder
        res = scope.detach(lab)
        assert res.returncode == 0, res.stderr
        assert "removed the pins" in res.stdout and "removed the internal pair" in res.stdout
        assert hook_state(lab) == with_holder
        assert not scope.root.exists() and not list(scope.state.glob("*.json"))
        # the other program is still attached and still counts
        counts = holder.counts()
        passed, _ = frames(lab)
        send_frames(lab, lab.src, "eth0", passed)
        time.sleep(0.5)
        assert holder.counts()["udp4"] - counts["udp4"] == len(passed)
        assert scope.detach(lab).stdout.strip() == "nothing of bpftap's found"
    assert hook_state(lab) == before


def test_pins_of_an_incompatible_build_are_refused_and_left_mirroring(lab: Lab, scope: PinScope,
                                                                      tmp_path: Path) -> None:
    """A build whose maps differ (here MAX_SESSIONS=32) cannot adopt: a clear error, exit 1, nothing touched."""
    other = tmp_path / "mirror_tc.other.bpf.o"
    bpf = Path(__file__).resolve().parents[2] / "bpf"
    include = f"-I/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-Wall", "-Werror", include, f"-I{bpf}",
                    "-DMAX_SESSIONS=32", "-c", str(bpf / "mirror_tc.bpf.c"), "-o", str(other)], check=True)
    before = hook_state(lab)
    Agent(lab, config(lab), pins=scope).stop(signal.SIGKILL)
    killed, ids = hook_state(lab), prog_ids(lab)
    (tmp_path / "b.yaml").write_text(config(lab))
    res = subprocess.run(in_tap(lab, [*BPFTAP, "run", "-c", str(tmp_path / "b.yaml"), "--upgrade", "--object",
                                      str(other)]), env=scope.env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 1
    assert "map sessions pinned at" in res.stderr and "incompatible build" in res.stderr, res.stderr
    assert "bpftap detach" in res.stderr
    assert hook_state(lab) == killed and prog_ids(lab) == ids, "a refused run changed what was attached"
    again = Agent(lab, config(lab), pins=scope)
    assert again.stop() == 0 and "adopting the pins" in again.output()
    assert hook_state(lab) == before
