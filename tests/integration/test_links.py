"""A listed link: copies use only the room originals leave, while the originals' load steps up and down.

The tapped host's uplink to `dst` (tap eth1) is a tbf of RATE bit/s, and the
copies of everything the tapped host forwards (to a kernel VXLAN device on
dst) share it. Originals: flow A at 30 % of the rate for 7 s, and flow B at
60 % from 2.5 s to 4.5 s, so the link's load steps 30 -> 90 -> 30 %. The same
schedule runs first without bpftap (the baseline), then with bpftap and
`links: [{interface: eth1, capacity: RATE}]`, a CPU kept busy. Originals
must lose no more than in the baseline; the copies received, counted every
quarter second, must keep to the room while B runs and be back to every
packet of A within a second of each step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bpftap import abi
from bpftap.bench import labkit as K
from bpftap.lab import Lab

from .agent_lab import Agent
from .test_big_packets import busy_cpu

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
    pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 missing"),
]

RATE = 100_000_000  # the uplink's tbf, bit/s
PAYLOAD = 1400
FRAME = PAYLOAD + 42  # what tbf counts of an original
COPY = FRAME + 50  # and of its VXLAN copy
PORTS = (5301, 5302)
CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: ids, remote: "{remote}", vni: 42}}
rules:
  - {{number: 10, protocol: udp, dst_ports: "5301-5302", sessions: [ids]}}
links:
  - {{interface: eth1, capacity: {rate}}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        K.add_vxlan(lab, lab.dst, "vxr0", str(lab.dst.ip4), "eth0")
        K.copy_counter(lab, lab.dst, "vxr0", str(lab.dst.ip4), 17)
        burst = RATE // 8 // 200  # 5 ms
        lab.run(lab.tap, ["tc", "qdisc", "replace", "dev", "eth1", "root", "tbf", "rate", f"{RATE}bit",
                          "burst", str(burst), "latency", "20ms"])
        yield lab


@dataclass
class Run:
    flows: list[dict[str, Any]]  # iperf3's end sums, A then B
    copies: list[tuple[float, int]]  # (seconds since A started, copies received so far)

    def lost(self, i: int) -> tuple[int, int]:
        s = self.flows[i]
        return int(s["lost_packets"]), int(s["packets"])

    def copy_pps(self, start: float, end: float) -> float:
        """Copies received per second between two moments (the samples nearest inside them)."""
        inside = [(t, n) for t, n in self.copies if start <= t <= end]
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)


def pps(fraction: float) -> float:
    return fraction * RATE / 8 / FRAME


def steps(lab: Lab) -> Run:
    """Flow A at 30 % for 7 s, flow B at 60 % from 2.5 s for 2 s; copies counted every 0.25 s meanwhile."""
    servers = [lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", str(p)], stdout=subprocess.DEVNULL)
               for p in PORTS]
    time.sleep(0.5)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def client(port: int, fraction: float, seconds: int) -> Any:
        rate = int(pps(fraction) * PAYLOAD * 8)
        return lab.popen(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", str(port), "-u", "-l", str(PAYLOAD),
                                   "-b", str(rate), "-t", str(seconds), "-J"], stdout=subprocess.PIPE, text=True)

    t0 = time.monotonic()
    a = client(PORTS[0], 0.30, 7)

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic() - t0, K.copy_count(lab, lab.dst, "vxr0")))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(2.5)
        b = client(PORTS[1], 0.60, 2)
        outs = [p.communicate(timeout=30)[0] for p in (a, b)]
    finally:
        done.set()
        sampler.join()
        for s in servers:
            s.wait(timeout=10)
    return Run([json.loads(o)["end"]["sum"] for o in outs], samples)


def test_copies_keep_to_the_room_originals_leave_as_their_load_steps(lab: Lab) -> None:
    with busy_cpu():
        baseline = steps(lab)
        agent = Agent(lab, CONFIG.format(remote=lab.dst.ip4, rate=RATE))
        try:
            run = steps(lab)
            link = agent.status()["links"]
        finally:
            assert agent.stop() == 0, agent.output()
    for i, name in enumerate("AB"):
        (lost0, sent0), (lost, sent) = baseline.lost(i), run.lost(i)
        assert baseline.copy_pps(0.5, 7.0) == 0
        # no more lost than without bpftap, give or take 0.01 % of what was sent
        assert lost <= lost0 + sent // 10_000, f"flow {name}: {lost}/{sent} lost, {lost0}/{sent0} without bpftap"
    assert [(x["name"], x["capacity"]) for x in link] == [("eth1", RATE)]
    assert link[0]["shed"] > 0 and link[0]["copies"] > 0, link
    # 30 %: every packet of A is copied; 90 %: copies keep to the room (95 % - 90 %, with room to measure);
    # back at 30 %: every packet again, within a second
    a_pps = pps(0.30)
    assert run.copy_pps(1.0, 2.4) >= 0.9 * a_pps, (run.copies, a_pps)
    assert run.copy_pps(3.5, 4.4) * COPY * 8 <= 0.10 * RATE, run.copies
    assert run.copy_pps(5.6, 6.8) >= 0.9 * a_pps, run.copies


def test_a_link_slower_than_its_capacity_cuts_copies_on_its_queues_signal(lab: Lab) -> None:
    """`capacity` twice the tbf's real rate: the kernel's bucket lets too many copies through, the agent sees
    the root qdisc drop or back up and cuts the bucket's fill; originals keep almost all that copies without
    the link's feedback would cost them."""

    def one_flow(agent: Agent | None) -> tuple[int, int]:
        server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", str(PORTS[0])], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        rate = int(pps(0.60) * PAYLOAD * 8)
        out = lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", str(PORTS[0]), "-u", "-l", str(PAYLOAD),
                                "-b", str(rate), "-t", "5", "-J"], timeout=30).stdout
        server.wait(timeout=10)
        s = json.loads(out)["end"]["sum"]
        return int(s["lost_packets"]), int(s["packets"])

    unlisted = CONFIG.split("links:", maxsplit=1)[0]
    with busy_cpu():
        baseline = one_flow(None)
        agent = Agent(lab, unlisted.format(remote=lab.dst.ip4))
        try:
            blind = one_flow(agent)
        finally:
            assert agent.stop() == 0, agent.output()
        agent = Agent(lab, CONFIG.format(remote=lab.dst.ip4, rate=2 * RATE))
        try:
            governed = one_flow(agent)
            link = agent.status()["links"][0]
        finally:
            assert agent.stop() == 0, agent.output()
    print(f"lost/sent: without bpftap {baseline}, copies unlisted {blind}, link at 2x capacity {governed}; {link}")
    assert link["capacity"] == 2 * RATE and link["queue_cuts"] > 0, link
    # unlisted, 60 % originals + 60 % copies overflow the link: originals lose about a sixth
    assert blind[0] > blind[1] // 20, blind
    # listed with a wrong capacity, the queue's signal keeps the originals' loss to a small part of that
    assert governed[0] - baseline[0] <= blind[0] // 10, (governed, blind, baseline)
