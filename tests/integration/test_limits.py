"""Sampling and rate limits on real traffic: counted results within 1 %, the rate within 5 % over 10 s."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import Agent

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CONFIG = """
sources: [{{interface: eth0, direction: ingress}}]
sessions:
  - {{name: sampled, remote: "{col}", vni: 1, sample: 10}}
  - {{name: limited, remote: "{col}", vni: 2, rate_limit: {{pps: 500}}}}
rules:
  - {{number: 10, protocol: udp, dst_ports: 5201, sessions: [sampled, limited]}}
"""
SECONDS = 10
PPS = 2000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def test_sampling_and_rate_limit_on_a_ten_second_flow(lab: Lab) -> None:
    agent = Agent(lab, CONFIG.format(col=lab.col.ip4))
    server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        # 100-byte datagrams at 2,000 a second: 1.6 Mbit/s
        out = lab.run(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", "5201", "-u", "-l", "100",
                                "-b", str(PPS * 100 * 8), "-t", str(SECONDS), "-w", "4M", "--json"],
                      timeout=SECONDS + 30).stdout
        time.sleep(0.5)
        status = agent.status()
    finally:
        assert agent.stop() == 0
        server.wait(timeout=10)
    sent = json.loads(out)["end"]["sum"]["packets"]
    matched = next(r["packets"] for r in status["rules"] if r["number"] == 10)
    sessions = {s["name"]: s for s in status["sessions"]}
    sampled, limited = sessions["sampled"], sessions["limited"]

    assert matched >= sent  # the rule saw every datagram (and iperf3's few control ones over UDP)
    # every match is either copied or counted as not sent, per session
    assert sampled["packets"] + sampled["sampled_out"] == matched
    assert limited["packets"] + limited["rate_limited"] == matched
    # 1 in 10, within 1 %
    assert abs(sampled["packets"] - matched / 10) <= 0.01 * matched / 10, (sampled, matched)
    # 500 copies a second (plus a 100 ms burst), within 5 % over the flow
    expected = 500 * SECONDS
    assert abs(limited["packets"] - expected) <= 0.05 * expected, (limited["packets"], expected)
