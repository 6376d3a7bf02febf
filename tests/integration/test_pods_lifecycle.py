"""Pods attached inside come and go, and so does the agent: churn, adoption across a restart, clean-up.

The lab is test_pods_inside's (an eBPF CNI's redirects, a CPU kept busy
where traffic flows); the agent runs by nsenter so that its pins live on
the host's bpffs, where a restarted agent and the test can see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bpftap import abi

from .agent_lab import BPFTAP, PinScope, work_dir
from .podlab import COL4, VNI, PodLab, wait_for
from .test_big_packets import busy_cpu
from .test_pods_inside import CONFIG, PINGS, cni, lab, links, netns, ping_outside_to_pod, status

__all__ = ["lab"]  # the fixture, shared with test_pods_inside

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]


@pytest.fixture
def pin_env() -> Iterator[tuple[Path, dict[str, str]]]:
    """A work directory and a PinScope's environment: the agent's pins (on the host's bpffs) and state of its own,
    removed at the end (a passing test has asserted the agent left no pin)."""
    scope = PinScope()
    yield work_dir("pods-"), scope.env
    scope.remove()


def pinned_agent(lab: PodLab, config: Path, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`bpftap run` in the node namespace by nsenter, not ip netns exec: its pins outlive it on the host's bpffs."""
    with log.open("w") as out:
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{lab.node}", *BPFTAP, "run", "-c", str(config), *args],
                                stdout=out, stderr=out, env=env)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM to the agent: it detaches and exits 0 (else its log says why)."""
    proc.terminate()
    assert proc.wait(timeout=15) == 0, log.read_text()


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill what a failed test left running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def bpi_links(lab: PodLab) -> dict[str, int]:
    """The node ends of pod pairs: name -> ifindex."""
    return {link["ifname"]: link["ifindex"] for link in json.loads(lab.run(lab.node, ["ip", "-j", "link"]).stdout)
            if link["ifname"].startswith("bpi")}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_pod_churn_inside_leaves_nothing(lab: PodLab, pin_env: tuple[Path, dict[str, str]]) -> None:
    """20 pods attached inside, created and deleted one by one while web-1 takes pings (and 5 more deleted while
    being attached): each pod's pair and its pinned link go with it, nothing is left at the end, and the
    agent's RSS grows by less than 10 %."""
    scope, env = pin_env
    config = scope / "bpftap.yaml"
    config.write_text(CONFIG.format(col=COL4, vni=VNI, select=netns(lab, "web-*"), attach=", attach: inside"))
    log = scope / "agent.log"
    pins = Path(env["BPFTAP_PIN_ROOT"])

    def link_pins() -> int:
        return sum(1 for p in pins.rglob("*") if p.parent.name == "links")

    def bpi() -> list[str]:
        return [n for n in links(lab, lab.node) if n.startswith("bpi")]

    with cni(lab):
        proc = pinned_agent(lab, config, log, env)  # its pins on the host's bpffs, where the test can see them
        pinger = lab.popen(lab.ext, ["ping", "-i", "0.05", "198.18.10.1"], stdout=subprocess.DEVNULL)
        try:
            wait_for("web-1 inside", lambda: len(bpi()) == 1)
            time.sleep(1)
            start_rss, start_pins = rss_kib(proc.pid), link_pins()
            with busy_cpu():
                for i in range(20):
                    lab.add_pod(f"web-c{i}")
                    done = f"pod {lab.ns(f'web-c{i}')}: attached mirror_egress"
                    wait_for(f"web-c{i} inside", lambda: done in log.read_text())  # noqa: B023 (called at once)
                    assert len(bpi()) == 2
                    lab.del_pod(f"web-c{i}")
                    wait_for(f"web-c{i}'s pair to go", lambda: len(bpi()) == 1)
                # and 5 deleted while (or before) the agent attaches to them: it must survive the race
                for i in range(5):
                    lab.add_pod(f"web-r{i}")
                    time.sleep(0.3 * i)
                    lab.del_pod(f"web-r{i}")
            wait_for("the raced pods' pairs to go", lambda: len(bpi()) == 1)
            wait_for("the pins of the pods gone", lambda: link_pins() == start_pins)
            assert proc.poll() is None, log.read_text()
            end_rss = rss_kib(proc.pid)
            counters = status(lab)["counters"]
            stop(proc, log)
        finally:
            pinger.kill()
            pinger.wait()
            reap(proc)
    text = log.read_text()
    print(f"\nchurn: 20 pods inside, RSS {start_rss} -> {end_rss} KiB ({(end_rss / start_rss - 1) * 100:+.1f} %), "
          f"link pins {start_pins} at start and after; {text.count('(in the pod)')} inside attachments logged; "
          f"counters seen {counters.get('seen')} xfer_bad {counters.get('xfer_bad', 0)}")
    assert end_rss < start_rss * 1.10
    # a pod deleted while it is being attached is "not attached ... (trying again)", then forgotten
    assert "Traceback" not in text and "error" not in text.lower(), text
    assert not bpi() and "clsact" not in lab.run(lab.node, ["tc", "qdisc", "show"]).stdout
    assert not pins.exists() or not any(pins.rglob("*")), list(pins.rglob("*"))
    assert not [n for n in os.listdir("/run/netns") if n.startswith((f"{lab.prefix}-web-c", f"{lab.prefix}-web-r"))]


@pytest.mark.parametrize("mode", ["auto", "tc"])
def test_restarted_agent_adopts_inside_pods_and_no_copy_is_missed(lab: PodLab, mode: str,
                                                                  pin_env: tuple[Path, dict[str, str]]) -> None:
    """kill -9 of an agent attached inside a pod: its pinned links (tcx; clsact filters stay by themselves) go on
    copying with no agent; the next agent adopts the pod's pair and links or filters (no new pair, no re-attach),
    copies go on; SIGTERM then leaves nothing."""
    scope, env = pin_env
    config = scope / "bpftap.yaml"
    config.write_text(CONFIG.format(col=COL4, vni=VNI, select=netns(lab, "web-*"), attach=", attach: inside"))
    pins, pod, sent = Path(env["BPFTAP_PIN_ROOT"]), lab.ns("web-1"), 2 * PINGS

    def run(log: Path) -> subprocess.Popen[bytes]:
        return pinned_agent(lab, config, log, env, "--attach", mode)

    bpi = partial(bpi_links, lab)
    first, second = scope / "first.log", scope / "second.log"
    with cni(lab), busy_cpu():
        proc = run(first)
        try:
            wait_for("web-1 inside", lambda: "(in the pod)" in first.read_text())
            wait_for("the session", lambda: all(s["via"] for s in status(lab).get("sessions", [{"via": None}])))
            pair = bpi()
            assert len(pair) == 1
            if "(tcx link) (in the pod)" in first.read_text():  # clsact filters need no pin
                assert any(pins.rglob("pods/*/*")), list(pins.rglob("*"))
            proc.kill()
            proc.wait()
            orphaned = ping_outside_to_pod(lab, "web-1")  # no agent: the pinned links do it all
            proc = run(second)
            wait_for("the adoption", lambda: "adopted" in second.read_text() and "(in the pod)" in second.read_text())
            adopted = ping_outside_to_pod(lab, "web-1")
            assert bpi() == pair  # the same pair, not a new one
            stop(proc, second)
        finally:
            reap(proc)
    text = second.read_text()
    in_pod = sum(1 for line in text.splitlines() if "adopted mirror_" in line and "(in the pod)" in line)
    print(f"\nrestart with a pod inside: copies with no agent running {orphaned['request']}/{orphaned['reply']} "
          f"of {sent}/{sent} (requests/replies), after the adoption {adopted['request']}/{adopted['reply']}; "
          f"links adopted in the pod: {in_pod}")
    assert orphaned["request"] == orphaned["reply"] == sent
    assert adopted["request"] == adopted["reply"] == sent
    assert in_pod == 3 and "adopted mirror_encap_in" in text, text  # bpftapi's, eth0's two; bpi<N>'s on the node
    assert "attached mirror_ingress on eth0" not in text and "Traceback" not in text, text
    assert not bpi() and "bpftapi" not in links(lab, pod)
    assert not pins.exists() or not any(pins.rglob("*")), list(pins.rglob("*"))


def test_a_restart_that_no_longer_attaches_inside_removes_the_pair_and_its_pins(
        lab: PodLab, pin_env: tuple[Path, dict[str, str]]) -> None:
    """kill -9 of an agent attached inside, then one whose config attaches on the host side: it removes the earlier
    pair (with bpftapi in the pod) and the pod's pinned links, and attaches on the host-side veth."""
    scope, env = pin_env
    config, pins = scope / "bpftap.yaml", Path(env["BPFTAP_PIN_ROOT"])
    config.write_text(CONFIG.format(col=COL4, vni=VNI, select=netns(lab, "web-1"), attach=", attach: inside"))
    first, second = scope / "first.log", scope / "second.log"
    proc = pinned_agent(lab, config, first, env)
    try:
        wait_for("web-1 inside", lambda: "(in the pod)" in first.read_text() and len(bpi_links(lab)) == 1)
        proc.kill()
        proc.wait()
        config.write_text(CONFIG.format(col=COL4, vni=VNI, select=netns(lab, "web-1"), attach=""))
        proc = pinned_agent(lab, config, second, env)
        # the agent prunes after it has attached, and logs what it removed once it is done
        wait_for("host-side attach and prune", lambda: "attached mirror_ingress on vp-web-1" in second.read_text()
                 and "removed the pins at" in second.read_text())
        assert not bpi_links(lab) and "bpftapi" not in links(lab, lab.ns("web-1"))
        assert not list(pins.rglob("pods/*/*")), list(pins.rglob("*"))
        stop(proc, second)
    finally:
        reap(proc)
    text = second.read_text()
    assert "removed bpi" in text and "removed the pins at" in text and "Traceback" not in text, text
