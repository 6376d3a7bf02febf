"""Collector groups on real TCP: both directions of each connection reach one collector, spread evenly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import Agent, sniffing

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

COLLECTORS = ["198.18.2.1", "198.18.2.2", "198.18.2.3"]
CONNECTIONS = 100
CONFIG = """
sources: [{{interface: eth0}}]
sessions:
  - {{name: ids, remotes: {collectors}, vni: 42}}
rules:
  - {{number: 10, protocol: tcp, sessions: [ids]}}
"""
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(128); print("ready", flush=True)
for _ in range({n}):
    c, _ = s.accept(); c.recv(100); c.sendall(b"pong"); c.close()
"""
CLIENT = """
import socket, sys
for port in range(41000, 41000 + {n}):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("0.0.0.0", port)); c.connect((sys.argv[1], 5000)); c.sendall(b"ping"); c.recv(100); c.close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        for addr in COLLECTORS[1:]:
            lab.run(lab.col, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0", "nodad"])
        yield lab


def test_each_connection_goes_to_one_collector_and_they_share_the_load(lab: Lab) -> None:
    agent = Agent(lab, CONFIG.format(collectors="[" + ", ".join(COLLECTORS) + "]"))
    server = lab.popen(lab.dst, [sys.executable, "-c", SERVER.format(n=CONNECTIONS)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with sniffing(lab, [(lab.col, "eth0")], seconds=8) as seen:
            lab.run(lab.src, [sys.executable, "-c", CLIENT.format(n=CONNECTIONS), str(lab.dst.ip4)], timeout=60)
            time.sleep(0.5)
        server.wait(timeout=10)
        sessions = {s["name"]: s["packets"] for s in agent.status()["sessions"]}
    finally:
        assert agent.stop() == 0
    # which collectors saw each connection, both directions together
    collectors_of: dict[int, set[str]] = defaultdict(set)
    directions: dict[int, set[bool]] = defaultdict(set)
    for outgoing, frame in seen["col.eth0"]:
        outer = Ether(frame)
        if outgoing:  # the collector host's ICMP port unreachable replies quote the copies
            continue
        if VXLAN not in outer:
            continue
        inner = outer[VXLAN].payload
        if IP in inner and TCP in inner:
            tcp = inner[TCP]
            client_port = tcp.sport if tcp.dport == 5000 else tcp.dport
            collectors_of[client_port].add(outer[IP].dst)
            directions[client_port].add(tcp.dport == 5000)
    assert len(collectors_of) == CONNECTIONS
    assert all(d == {True, False} for d in directions.values()), "both directions of every connection are mirrored"
    split = {port: c for port, c in collectors_of.items() if len(c) != 1}
    assert not split, f"connections split across collectors: {split}"
    per = defaultdict(int)
    for c in collectors_of.values():
        per[next(iter(c))] += 1
    even = CONNECTIONS / len(COLLECTORS)
    assert all(abs(per[c] - even) <= 0.2 * even for c in COLLECTORS), dict(per)
    assert set(sessions) == {f"ids@{c}" for c in COLLECTORS}
