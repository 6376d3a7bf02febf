"""Reload under load: 20 SIGHUP reloads during a TCP flow and a 10 ms ping lose nothing, and counters carry on."""

from __future__ import annotations

import json
import os
import signal
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

SET_A = """
sources: [{{interface: eth0}}]
sessions: [{{name: ids, remote: "{col}", vni: 42}}]
rules:
  - {{number: 100, protocol: icmp, sessions: [ids]}}
  - {{number: 500, protocol: tcp, dst_ports: 5201, sessions: [ids]}}
"""
SET_B = """
sources: [{{interface: eth0}}]
sessions: [{{name: ids, remote: "{col}", vni: 42}}]
rules:
  - {{number: 50, action: skip, protocol: udp}}
  - {{number: 500, protocol: tcp, dst_ports: 5201, sessions: [ids]}}
  - {{number: 600, protocol: tcp, src_ports: 5201, sessions: [ids]}}
"""
RELOADS = 20


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def backlog_drops() -> int:
    """Packets dropped by a full per-CPU backlog queue, all CPUs (/proc/net/softnet_stat column 2)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f)


def link_drops(lab: Lab) -> int:
    """rx/tx drops of every link the original flow crosses."""
    total = 0
    for host, dev in ((lab.src, "eth0"), (lab.tap, "eth0"), (lab.tap, "eth1"), (lab.dst, "eth0")):
        stats = json.loads(lab.run(host, ["ip", "-s", "-j", "link", "show", dev]).stdout)[0]["stats64"]
        total += stats["rx"]["dropped"] + stats["tx"]["dropped"]
    return total


def test_reloads_under_load_lose_nothing(lab: Lab) -> None:
    sets = [text.format(col=lab.col.ip4) for text in (SET_A, SET_B)]
    drops_before = backlog_drops(), link_drops(lab)
    agent = Agent(lab, sets[0])
    server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        flow = lab.popen(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", "5201", "-t", "22", "-b", "200M", "--json"],
                         stdout=-1, text=True)
        pings = lab.popen(lab.src, ["ping", "-i", "0.01", "-c", "2000", "-q", str(lab.dst.ip4)], stdout=-1, text=True)
        time.sleep(0.5)
        seen_500, seen_copies = [], []
        for i in range(RELOADS):
            tmp = agent.config.with_suffix(".tmp")
            tmp.write_text(sets[(i + 1) % 2])
            tmp.replace(agent.config)
            agent.proc.send_signal(signal.SIGHUP)
            want = {100, 500} if i % 2 else {50, 500, 600}
            deadline = time.monotonic() + 10
            while {r["number"] for r in agent.status()["rules"]} != want:
                assert time.monotonic() < deadline, f"reload {i + 1} not applied"
                time.sleep(0.05)
            time.sleep(0.5)
            status = agent.status()
            seen_500.append(next(r["packets"] for r in status["rules"] if r["number"] == 500))
            seen_copies.append(status["sessions"][0]["packets"])
        # the file rewritten with the same content (a ConfigMap's sync) installs nothing
        applied = agent.output().count("rules applied")
        os.utime(agent.config)
        deadline = time.monotonic() + 10
        while "rewritten with the same content" not in agent.output():
            assert time.monotonic() < deadline, "the file's rewrite was not noticed"
            time.sleep(0.05)
        assert agent.output().count("rules applied") == applied
        ping_out, _ = pings.communicate(timeout=60)
        flow_out, _ = flow.communicate(timeout=60)
    finally:
        assert agent.stop() == 0
        server.wait(timeout=10)

    assert "2000 packets transmitted, 2000 received" in ping_out, ping_out
    result = json.loads(flow_out)["end"]
    sent = result["sum_sent"]
    # no original dropped anywhere on its path (TCP retransmits alone can be spurious on a loaded VM)
    assert (backlog_drops(), link_drops(lab)) == drops_before, f"drops; TCP retransmits {sent['retransmits']}"
    assert result["sum_received"]["bytes"] == sent["bytes"]
    # rule 500 is in both sets: its counter and the session's copies only ever grow
    assert seen_500 == sorted(seen_500) and seen_500[-1] > seen_500[0], seen_500
    assert seen_copies == sorted(seen_copies) and seen_copies[-1] > seen_copies[0], seen_copies
    # each edit applied by the file watch or the SIGHUP, or by both when the watch saw the edit first
    assert RELOADS + 1 <= agent.output().count("rules applied") <= 2 * RELOADS + 1, agent.output()
