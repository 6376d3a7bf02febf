"""End to end on the real kernel: the lab, `bpftap run` on the tapped host, the kernel's VXLAN devices as receivers.

Crafted frames leave the source host toward the destination host through the
tapped host's eth0, where bpftap mirrors both directions to the collector host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.bpf.probe import probe
from bpftap.collector.pcapng import PcapngWriter
from bpftap.lab import Lab

from .agent_lab import (
    Agent,
    PinScope,
    hook_state,
    needs_mode,
    received,
    send_frames,
    sniffing,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CONFIG = """
sources:
  - interface: eth0
sessions:
  - {{name: ids, remote: "{col4}", vni: 42}}
  - {{name: ids6, remote: "{col6}", vni: 43}}
rules:
  - {{number: 10, action: skip, protocol: udp, dst_ports: 7001}}
  - {{number: 20, protocol: udp, dst_ports: 7000-7001, sessions: [ids, ids6]}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        # the kernel's own VXLAN devices decapsulate on the collector host
        col = lab.col
        lab.run(col, ["ip", "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4789",
                      "local", str(col.ip4), "nolearning"])
        lab.run(col, ["ip", "link", "add", "vx43", "type", "vxlan", "id", "43", "dstport", "4789",
                      "local", str(col.ip6), "nolearning", "udp6zerocsumrx"])
        lab.run(col, ["ip", "link", "add", "vx44", "type", "vxlan", "id", "44", "dstport", "4789",
                      "local", str(col.ip4), "nolearning"])
        for dev in ("vx42", "vx43", "vx44"):
            lab.run(col, ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
            lab.run(col, ["ip", "link", "set", dev, "up"])
        yield lab


MARKER = b"bpftap end to end "


def frames(lab: Lab) -> dict[str, list[bytes]]:
    """Crafted frames from src toward dst, by what bpftap must do with them."""
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    v4 = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4), id=7, ttl=64)
    v6 = IPv6(src=str(lab.src.ip6), dst=str(lab.dst.ip6), hlim=64)
    body = Raw(MARKER * 8)
    return {
        "mirror": [bytes(l2 / v4 / UDP(sport=6000 + i, dport=7000) / body) for i in range(5)]
        + [
            bytes(l2 / v6 / UDP(sport=6100, dport=7000) / body),
            bytes(l2 / Dot1Q(vlan=7) / v4 / UDP(sport=6200, dport=7000) / body),
            bytes(l2 / Dot1AD(vlan=100) / Dot1Q(vlan=7) / v4 / UDP(sport=6300, dport=7000) / body),
        ],
        "skip": [bytes(l2 / v4 / UDP(sport=6400 + i, dport=7001) / body) for i in range(3)],
        "none": [bytes(l2 / v4 / UDP(sport=6500 + i, dport=7500) / body) for i in range(3)],
    }


def config(lab: Lab) -> str:
    return CONFIG.format(col4=lab.col.ip4, col6=lab.col.ip6)


def test_copies_are_the_originals_byte_for_byte(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    crafted = frames(lab)
    agent = Agent(lab, config(lab))
    try:
        points = [(lab.col, "vx42"), (lab.col, "vx43"), (lab.col, "eth0"), (lab.src, "eth0"), (lab.tap, "eth0")]
        with sniffing(lab, points) as seen:
            send_frames(lab, lab.src, "eth0", crafted["mirror"] + crafted["skip"] + crafted["none"])
        status = agent.status()
    finally:
        assert agent.stop() == 0
    want = Counter(crafted["mirror"])

    # item 3: the kernel's VXLAN devices decapsulate every copy into the original frame
    assert received(seen["col.vx42"]) == want, "IPv4 session (vni 42): decapsulated frames differ from the originals"
    assert received(seen["col.vx43"]) == want, "IPv6 session (vni 43): decapsulated frames differ from the originals"
    # skip rules win, unmatched frames produce no copy
    rules = {r["number"]: r["packets"] for r in status["rules"]}
    assert rules == {10: 3, 20: len(crafted["mirror"])}
    assert {s["name"]: s["packets"] for s in status["sessions"]} == {"ids": 8, "ids6": 8}

    # invariant 2: the monitored link carries exactly the test's frames, as its other end saw
    # them, and never a copy (the two captures start apart, so background neighbour
    # discovery at the edges of their windows is left out of the comparison)
    src_side = Counter(f for _, f in seen["src.eth0"] if MARKER in f)
    tap_side = Counter(f for _, f in seen["tap.eth0"] if MARKER in f)
    assert tap_side == src_side, "a frame showed up on the source interface that did not cross the wire"
    copies = [f for _, f in seen["tap.eth0"] if b"\x12\xb5" in f[34:38] or b"\x12\xb5" in f[54:58]]
    assert not copies, "a copy (UDP 4789) showed up on the source interface"

    # item 7: tshark dissects the outer frames as VXLAN with the sessions' VNIs
    pcap = tmp_path / "outer.pcapng"
    with PcapngWriter(pcap) as writer:
        for _, frame in seen["col.eth0"]:
            writer.write(frame, 0)
    vnis = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "vxlan", "-T", "fields", "-E", "occurrence=f", "-e", "vxlan.vni",
         "-e", "eth.type", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    pairs = Counter(tuple(line.split("\t")) for line in vnis if line)
    assert pairs == {("42", "0x0800", "4789"): 8, ("43", "0x86dd", "4789"): 8}
    # the agent ran under `ip netns exec`, where it had to mount a bpffs itself
    assert "mounted bpffs at /sys/fs/bpf" in agent.output()


def test_originals_reach_the_destination_unchanged(lab: Lab) -> None:
    """Invariant 1: what reaches the destination host is the same, byte for byte, with and without bpftap."""
    crafted = frames(lab)
    sent = crafted["mirror"] + crafted["skip"] + crafted["none"]

    def at_destination() -> Counter[bytes]:
        with sniffing(lab, [(lab.dst, "eth0")]) as seen:
            send_frames(lab, lab.src, "eth0", sent)
        return Counter(f for f in received(seen["dst.eth0"]) if MARKER in f)

    without = at_destination()
    agent = Agent(lab, config(lab))
    try:
        with_bpftap = at_destination()
    finally:
        assert agent.stop() == 0
    # untagged frames are routed on to dst (tagged ones stop at tap: no VLAN device there)
    assert sum(without.values()) == len(sent) - 2
    assert with_bpftap == without


def test_one_packet_fans_out_to_three_collectors(lab: Lab) -> None:
    """A rule feeding three sessions: each collector (a kernel VXLAN device) gets a correct copy."""
    crafted = frames(lab)["mirror"]
    text = config(lab).replace("sessions: [ids, ids6]", "sessions: [ids, ids6, ids44]")
    text = text.replace("rules:", f'  - {{name: ids44, remote: "{lab.col.ip4}", vni: 44}}\nrules:')
    agent = Agent(lab, text)
    try:
        with sniffing(lab, [(lab.col, dev) for dev in ("vx42", "vx43", "vx44")]) as seen:
            send_frames(lab, lab.src, "eth0", crafted)
        sessions = {s["name"]: s["packets"] for s in agent.status()["sessions"]}
    finally:
        assert agent.stop() == 0
    for dev in ("vx42", "vx43", "vx44"):
        assert received(seen[f"col.{dev}"]) == Counter(crafted), dev
    assert sessions == {"ids": len(crafted), "ids6": len(crafted), "ids44": len(crafted)}


@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_detach_leaves_nothing_also_after_sigkill(lab: Lab, mode: str) -> None:
    """Invariant 6: SIGTERM detaches everything; after SIGKILL all stays, the next run adopts it and its exit
    leaves nothing."""
    needs_mode(mode)
    scope = PinScope()
    try:
        before = hook_state(lab)
        agent = Agent(lab, config(lab), "--attach", mode, pins=scope)
        assert all(f"({'tcx link' if mode == 'tcx' else 'clsact'}" in a for a in agent.status()["attachments"])
        assert agent.stop() == 0
        assert hook_state(lab) == before and not scope.root.exists()

        Agent(lab, config(lab), "--attach", mode, pins=scope).stop(signal.SIGKILL)
        assert hook_state(lab) != before, "a killed agent's links (pinned) and filters stay, still mirroring"
        again = Agent(lab, config(lab), "--attach", mode, pins=scope)
        assert again.stop() == 0
        assert "adopting the pins" in again.output()
        assert hook_state(lab) == before and not scope.root.exists()

        # under `ip netns exec` the agent's bpffs (and its pins) die with it: the next run cleans up instead
        Agent(lab, config(lab), "--attach", mode).stop(signal.SIGKILL)
        again = Agent(lab, config(lab), "--attach", mode)
        assert again.stop() == 0
        assert "died without cleaning up" in again.output()
        assert hook_state(lab) == before
    finally:
        scope.close(lab)


def test_check_reports_features_and_mode(lab: Lab) -> None:
    res = lab.run(lab.tap, [sys.executable, "-m", "bpftap.cli", "check"], check=False)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(None, 1) for line in res.stdout.splitlines())
    tcx = probe().tcx  # found by trying to attach, as `check` does: the kernel's version plays no part
    assert lines["mode"].strip() == ("tcx" if tcx else "tc (clsact)")
    assert lines["tcx"].startswith("yes" if tcx else "no"), res.stdout
    for feature in ("btf", "ringbuf", "test_run", "clsact"):
        assert lines[feature].startswith("yes"), res.stdout


def test_auto_attach_takes_tcx_where_the_kernel_has_it_else_clsact(lab: Lab) -> None:
    agent = Agent(lab, config(lab))
    try:
        attachments = agent.status()["attachments"]
    finally:
        assert agent.stop() == 0
    want = "(tcx link" if probe().tcx else "(clsact"
    assert attachments and all(want in a for a in attachments), attachments


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 missing")
def test_status_without_agent_says_so(lab: Lab) -> None:
    res = lab.run(lab.dst, [sys.executable, "-m", "bpftap.cli", "status"], check=False)
    assert res.returncode == 1
    assert "no bpftap agent runs in this network namespace" in res.stderr


def test_pause_stops_every_copy_and_resume_restarts(lab: Lab) -> None:
    """The kill switch: paused, originals flow and nothing is copied; resumed, copies again."""
    crafted = frames(lab)["mirror"]
    agent = Agent(lab, config(lab))
    try:
        res = lab.run(lab.tap, [sys.executable, "-m", "bpftap.cli", "pause"])
        assert "paused" in res.stdout
        with sniffing(lab, [(lab.col, "vx42"), (lab.dst, "eth0")]) as paused:
            send_frames(lab, lab.src, "eth0", crafted)
        status = agent.status()
        assert status["paused"] is True and status["counters"]["paused"] >= len(crafted)
        lab.run(lab.tap, [sys.executable, "-m", "bpftap.cli", "resume"])
        with sniffing(lab, [(lab.col, "vx42")]) as resumed:
            send_frames(lab, lab.src, "eth0", crafted)
    finally:
        assert agent.stop() == 0
    assert not received(paused["col.vx42"]), "a copy was sent while paused"
    assert sum(1 for f in received(paused["dst.eth0"]) if MARKER in f) == len(crafted) - 2  # untagged ones
    assert received(resumed["col.vx42"]) == Counter(crafted)


def test_snaplen_truncates_one_session_and_leaves_the_other_whole(lab: Lab) -> None:
    crafted = frames(lab)["mirror"]
    text = config(lab).replace("vni: 43}", "vni: 43, snaplen: 96}")
    agent = Agent(lab, text)
    try:
        with sniffing(lab, [(lab.col, "vx42"), (lab.col, "vx43")]) as seen:
            send_frames(lab, lab.src, "eth0", crafted)
        sessions = {s["name"]: s for s in agent.status()["sessions"]}
    finally:
        assert agent.stop() == 0
    assert received(seen["col.vx42"]) == Counter(crafted)
    # the kernel's VXLAN device checked the outer IPv6 UDP checksum of every cut copy
    assert received(seen["col.vx43"]) == Counter(f[:96] for f in crafted)
    assert (sessions["ids6"]["truncated"], sessions["ids"]["truncated"]) == (len(crafted), 0)


def test_without_redirect_chain_the_daemon_sends_the_copies(lab: Lab) -> None:
    """redirect_chain: false: the same copies reach the kernel's VXLAN devices, sent by the agent; originals
    unchanged."""
    crafted = frames(lab)
    sent = crafted["mirror"] + crafted["skip"] + crafted["none"]
    with sniffing(lab, [(lab.dst, "eth0")]) as seen:
        send_frames(lab, lab.src, "eth0", sent)
    without = Counter(f for f in received(seen["dst.eth0"]) if MARKER in f)
    agent = Agent(lab, config(lab) + "redirect_chain: false\n")
    try:
        points = [(lab.col, "vx42"), (lab.col, "vx43"), (lab.dst, "eth0"), (lab.src, "eth0"), (lab.tap, "eth0")]
        with sniffing(lab, points) as seen:
            send_frames(lab, lab.src, "eth0", sent)
        status = agent.status()
    finally:
        assert agent.stop() == 0
    want = Counter(crafted["mirror"])
    assert received(seen["col.vx42"]) == want, "IPv4 session (vni 42): decapsulated frames differ from the originals"
    assert received(seen["col.vx43"]) == want, "IPv6 session (vni 43): decapsulated frames differ from the originals"
    assert Counter(f for f in received(seen["dst.eth0"]) if MARKER in f) == without
    src_side = Counter(f for _, f in seen["src.eth0"] if MARKER in f)
    assert Counter(f for _, f in seen["tap.eth0"] if MARKER in f) == src_side
    assert status["redirect_chain"] is False
    assert {s["name"]: (s["packets"], s["ring_full"]) for s in status["sessions"]} == {"ids": (8, 0), "ids6": (8, 0)}


def test_redirect_chain_switches_on_reload(lab: Lab) -> None:
    """SIGHUP with redirect_chain: false turns the redirects off in the running agent; the copies still arrive."""
    crafted = frames(lab)["mirror"]
    agent = Agent(lab, config(lab))
    try:
        assert agent.status()["redirect_chain"] is True
        agent.config.write_text(config(lab) + "redirect_chain: false\n")
        agent.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while agent.status()["redirect_chain"]:
            assert time.monotonic() < deadline, "reload not applied"
            time.sleep(0.05)
        with sniffing(lab, [(lab.col, "vx42")]) as seen:
            send_frames(lab, lab.src, "eth0", crafted)
        packets = {s["name"]: s["packets"] for s in agent.status()["sessions"]}
    finally:
        assert agent.stop() == 0
    assert received(seen["col.vx42"]) == Counter(crafted)
    assert packets == {"ids": len(crafted), "ids6": len(crafted)}
