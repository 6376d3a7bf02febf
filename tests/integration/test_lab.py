"""The lab: four namespaces, routing through tap, MTUs, and a teardown that leaves nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpftap.lab import Lab, LabError, existing_namespaces, lab_prefixes


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode:
        return "`ip netns` is unavailable"
    return None


pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(_netns_unavailable() is not None,
                                 reason=_netns_unavailable() or "")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _links(lab: Lab, role: str) -> dict[str, dict]:
    out = lab.run(role, ["ip", "-j", "addr", "show"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def test_default_prefix_is_unique_and_creates_nothing() -> None:
    a, b = Lab(), Lab()
    assert a.prefix != b.prefix and a.prefix.startswith("bt") and len(a.prefix) == 8
    assert a.ns("tap") == f"{a.prefix}-tap" == a.tap.ns
    assert not {h.ns for h in a.hosts.values()} & existing_namespaces()


def test_ping_src_to_dst_through_tap(lab: Lab) -> None:
    assert lab.ping(lab.src, [lab.dst.ip4, lab.dst.ip6], timeout=5)
    assert lab.ping(lab.dst, [lab.src.ip4, lab.src.ip6], timeout=5)
    assert lab.ping(lab.col, [lab.src.ip4, lab.src.ip6], timeout=5)


def test_ping_fails_for_an_unused_address(lab: Lab) -> None:
    assert not lab.ping(lab.src, ["198.18.3.99"], timeout=1)


def test_addresses_macs_and_mtus_as_planned(lab: Lab) -> None:
    for host in lab.hosts.values():
        links = _links(lab, host.role)
        assert set(links) == {"lo"} | {i.name for i in host.ifaces}
        for iface in host.ifaces:
            link = links[iface.name]
            assert link["mtu"] == iface.mtu
            assert link["address"] == iface.mac
            addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"]}
            assert {(str(iface.ip4), 24), (str(iface.ip6), 64)} <= addrs
    assert lab.tap.eth2.mtu == lab.col.eth0.mtu == 9000
    assert lab.tap.eth0.mtu == lab.tap.eth1.mtu == lab.src.eth0.mtu == lab.dst.eth0.mtu == 1500
    assert str(lab.tap.eth2) == "eth2"


def test_tap_forwards_and_others_route_through_it(lab: Lab) -> None:
    fwd = lab.run(lab.tap, ["sysctl", "-n", "net.ipv4.ip_forward",
                            "net.ipv6.conf.all.forwarding"]).stdout.split()
    assert fwd == ["1", "1"]
    assert lab.run(lab.tap, ["ip", "route", "show", "default"]).stdout == ""
    route = lab.run(lab.src, ["ip", "route", "get", str(lab.dst.ip6)]).stdout
    assert f"via {lab.tap.eth0.ip6}" in route


def test_run_raises_with_stderr(lab: Lab) -> None:
    with pytest.raises(subprocess.CalledProcessError, match="nosuchdev\" does not exist"):
        lab.run(lab.src, ["ip", "link", "show", "nosuchdev"])


def test_close_ends_processes_and_removes_namespaces() -> None:
    lab = Lab()
    lab.up()
    try:
        plain = lab.popen(lab.tap, ["sleep", "300"])
        # a shell that ignores SIGTERM, with a child: needs SIGKILL, and the group
        stubborn = lab.popen(lab.col, ["sh", "-c", "trap '' TERM; sleep 300 & wait"])
        time.sleep(0.2)
        child = [int(p) for p in lab.run(lab.col, ["ip", "netns", "pids", lab.col.ns]).stdout.split()]
        assert plain.poll() is None and stubborn.poll() is None and len(child) >= 2
        assert lab.prefix in lab_prefixes()
    finally:
        lab.close()
    assert not {h.ns for h in lab.hosts.values()} & existing_namespaces()
    assert not [pid for pid in [plain.pid, stubborn.pid, *child] if _alive(pid)]
    lab.close()  # idempotent


def test_failed_up_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab()

    def broken() -> None:
        raise LabError("injected failure")

    monkeypatch.setattr(lab, "_wait_ready", broken)
    with pytest.raises(LabError, match="injected"):
        lab.up()
    assert not {h.ns for h in lab.hosts.values()} & existing_namespaces()


def test_existing_namespace_is_refused_and_left_alone() -> None:
    lab = Lab()
    subprocess.run(["ip", "netns", "add", lab.dst.ns], check=True)
    try:
        with pytest.raises(LabError, match=f"{lab.dst.ns} already exists"):
            lab.up()
        assert {h.ns for h in lab.hosts.values()} & existing_namespaces() == {lab.dst.ns}
    finally:
        subprocess.run(["ip", "netns", "del", lab.dst.ns], check=True)


def test_cli_up_list_down() -> None:
    prefix = Lab().prefix
    cli = [sys.executable, "-m", "bpftap.lab"]
    try:
        up = subprocess.run([*cli, "up", "--prefix", prefix], capture_output=True, text=True, check=False)
        assert up.returncode == 0, up.stderr
        assert "198.18.2.254/24" in up.stdout and f"{prefix}-col" in up.stdout
        listed = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True)
        assert prefix in listed.stdout.split()
    finally:
        down = subprocess.run([*cli, "down", "--prefix", prefix], capture_output=True, text=True, check=False)
    assert down.returncode == 0, down.stderr
    assert not any(ns.startswith(f"{prefix}-") for ns in existing_namespaces())


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_sigterm_ends_the_demo_as_ctrl_c_does() -> None:
    """SIGTERM (a timeout, a CI job's end) mid-demo: exit 130; its lab, processes and folder are gone."""
    before = set(lab_prefixes())
    demo = subprocess.Popen([sys.executable, "-m", "bpftap.cli", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert demo.stdout is not None
    seen, made, procs = "", set(), set()
    try:
        for line in demo.stdout:  # until the agent and the collector run
            seen += line
            if "traffic from the source host" in line:
                break
        made, procs = set(lab_prefixes()) - before, _descendants(demo.pid)
        demo.send_signal(signal.SIGTERM)
        seen += demo.communicate(timeout=60)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        left = made & set(lab_prefixes())
        for prefix in left:  # what a failed run left goes all the same
            Lab.adopt(prefix).close()
    work = re.search(r"writing (\S+)/mirror.pcapng", seen)
    assert demo.returncode == 130, seen
    assert len(made) == 1 and not left, seen
    assert len(procs) >= 2 and not [pid for pid in procs if _alive(pid)], seen
    assert work and not Path(work.group(1)).exists(), seen
