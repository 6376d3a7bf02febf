"""Soak: mirror a TCP flow and a ping through the whole data path for minutes; the kernel stays quiet.

Stage 1 clones each matched packet to the internal veth (clone_redirect), stage
2 encapsulates it there and redirects it toward the collector: the chained
redirects that once crashed other mirroring agents' nodes. Not in the normal
run (marker `soak`): `make soak` runs it for SOAK seconds (600 by default) in
the Linux 6.1 guest of the kernel matrix. BPFTAP_SOAK_REPORT names a JSON file
for the numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import Agent

pytestmark = [
    pytest.mark.soak,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CONFIG = """
sources: [{{interface: eth0}}]
sessions: [{{name: ids, remote: "{col}", vni: 42}}]
rules:
  - {{number: 100, protocol: icmp, sessions: [ids]}}
  - {{number: 500, protocol: tcp, sessions: [ids]}}
"""
# what a kernel prints when something went wrong in it
SPLAT = re.compile(r"WARNING:|BUG:|Oops|Call Trace|general protection|kernel panic|refcount_t|UBSAN|KASAN|RCU stall",
                   re.IGNORECASE)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def kernel_log() -> list[str]:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()


def test_mirror_for_minutes_without_a_kernel_warning(lab: Lab) -> None:
    seconds = int(os.environ.get("BPFTAP_SOAK_SECONDS", "600"))
    log_before = len(kernel_log())
    agent = Agent(lab, CONFIG.format(col=lab.col.ip4))
    server = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        flow = lab.popen(lab.src, ["iperf3", "-c", str(lab.dst.ip4), "-p", "5201", "-t", str(seconds), "-b", "20M",
                                   "--json"], stdout=-1, text=True)
        pings = lab.popen(lab.src, ["ping", "-i", "0.1", "-w", str(seconds), "-q", str(lab.dst.ip4)], stdout=-1,
                          text=True)
        flow_out, _ = flow.communicate(timeout=seconds + 60)
        ping_out, _ = pings.communicate(timeout=60)
        status = agent.status()
    finally:
        assert agent.stop() == 0
        server.wait(timeout=10)
    new_lines = kernel_log()[log_before:]
    splats = [line for line in new_lines if SPLAT.search(line)]
    mirrored = sum(r["packets"] for r in status["rules"])
    session = status["sessions"][0]
    sent = json.loads(flow_out)["end"]["sum_sent"]
    report = {"seconds": seconds, "mirrored": mirrored, "copies": session["packets"], "session": session,
              "tcp_bytes": sent["bytes"], "tcp_retransmits": sent["retransmits"],
              "ping": ping_out.strip().splitlines()[-2:], "attachments": status["attachments"],
              "dmesg_new_lines": len(new_lines), "dmesg_splats": splats}
    if os.environ.get("BPFTAP_SOAK_REPORT"):
        with open(os.environ["BPFTAP_SOAK_REPORT"], "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    assert not splats, splats
    assert mirrored > seconds and session["packets"] >= mirrored, report
    assert " 0% packet loss" in ping_out, ping_out
