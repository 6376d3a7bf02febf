"""Issue 6 item 6: `bpftap top` in a real terminal (tmux) in the tapped host's namespace while traffic flows.

A private tmux server (its own socket) runs `bpftap top` under `ip netns
exec`; UDP datagrams flow from src to dst through the mirrored eth0; the
captured pane must show the rules and sessions with non-zero rates, and q
must end it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpftap import abi
from bpftap.lab import Lab

from .agent_lab import Agent

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing (make test installs it)"),
]

CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: ids, remote: "{col4}", vni: 42}}
rules:
  - {{number: 10, action: skip, protocol: udp, dst_ports: 7001}}
  - {{number: 20, protocol: udp, dst_ports: 7000, sessions: [ids]}}
"""
# 200 datagrams a second to dst's port 7000 for at most `seconds` (bounded: it stops by itself)
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    s.sendto(b"bpftap top " * 10, (sys.argv[1], 7000))
    time.sleep(0.005)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


class Tmux:
    """A tmux server of our own (socket in a temporary folder), with one session."""

    def __init__(self, socket_path: Path, command: list[str]) -> None:
        self.base = ["tmux", "-S", str(socket_path)]
        self.tmux("new-session", "-d", "-s", "top", "-x", "140", "-y", "30", " ".join(command))

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=check, timeout=10)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "top", check=False).returncode == 0

    def close(self) -> None:
        self.tmux("kill-server", check=False)


def rate(screen: str, first_word: str) -> float:
    """The first rate column (p/s) of the row that starts with `first_word`; -1 if not shown yet."""
    for line in screen.splitlines():
        words = line.split()
        if words[:1] == [first_word]:
            col = 2 if first_word.isdigit() else 5  # sessions have "vxlan REMOTE vni N" first
            return -1.0 if words[col] == "-" else float(words[col])
    return -1.0


def test_top_shows_live_rates_and_quits_on_q(lab: Lab, tmp_path: Path) -> None:
    agent = Agent(lab, CONFIG.format(col4=lab.col.ip4))
    sender = lab.popen(lab.src, [sys.executable, "-c", SENDER, str(lab.dst.ip4), "20"])
    top = Tmux(tmp_path / "tmux.sock", ["ip", "netns", "exec", lab.tap.ns, sys.executable, "-m", "bpftap.cli", "top"])
    try:
        deadline, screen = time.monotonic() + 10, ""
        while time.monotonic() < deadline:
            screen = top.screen()
            if rate(screen, "20") > 0 and rate(screen, "ids") > 0:
                break
            time.sleep(0.5)
        assert rate(screen, "20") > 50, screen  # about 200 p/s are sent
        assert rate(screen, "ids") > 50, screen
        assert rate(screen, "10") == 0, screen
        assert re.search(r"^\s+20 mirror .* kB/s", screen, re.MULTILINE), screen
        assert "agent pid" in screen and "q quits" in screen
        top.tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 5
        while top.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not top.alive(), "q did not end bpftap top"
    finally:
        top.close()
        sender.kill()
        sender.wait()
        assert agent.stop() == 0


def test_top_once_for_scripts(lab: Lab) -> None:
    agent = Agent(lab, CONFIG.format(col4=lab.col.ip4))
    try:
        res = lab.run(lab.tap, [sys.executable, "-m", "bpftap.cli", "top", "--once", "--interval", "0.2"])
    finally:
        assert agent.stop() == 0
    assert "\x1b" not in res.stdout
    assert re.search(r"^\s+20 mirror\s+0 p/s", res.stdout, re.MULTILINE), res.stdout
