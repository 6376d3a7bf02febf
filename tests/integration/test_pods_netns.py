"""Pod selection by namespace name: five pods on a bridge, three selected; one added and one deleted while running.

The agent runs in the node namespace with `pods: {netns: "<p>-web-*"}`;
a kernel VXLAN device on the collector decapsulates the copies, and the
inner addresses tell which pods' traffic was mirrored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bpftap import abi

from .agent_lab import BPFTAP, WIRE, work_dir
from .podlab import BRIDGE4, COL4, VNI, PodLab, wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

CONFIG = """
sources: [{{pods: {{netns: "{prefix}-web-*"}}}}]
sessions: [{{name: ids, remote: "{col}", vni: {vni}}}]
rules: [{{number: 100, sessions: [ids]}}]
"""


@pytest.fixture
def podlab() -> Iterator[PodLab]:
    with PodLab() as lab:
        for pod in ("web-1", "web-2", "web-3", "db-1", "db-2"):
            lab.add_pod(pod)
        yield lab


def status(lab: PodLab) -> dict[str, Any]:
    res = lab.run(lab.node, [*BPFTAP, "status", "--json"])
    return json.loads(res.stdout) if res.returncode == 0 else {}


def attached(lab: PodLab) -> set[str]:
    """Host interfaces with a source program attached (the encap stage's internal pair left out)."""
    names = {a.split(" on ")[1].split()[0] for a in status(lab).get("attachments", [])}
    return {n for n in names if n not in ("bpftap0", "bpftap1")}


def inner_hosts(frame: bytes) -> set[str]:
    """The inner source and destination addresses of a decapsulated unicast Ethernet frame.

    Multicast (IPv6 neighbour solicitations of other pods) is flooded by the
    bridge to every port, so a selected pod's interface rightly sees it too.
    """
    kind = frame[12:14]
    if frame[0] & 1:
        return set()
    if kind == b"\x08\x00":
        return {str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34]))}
    if kind == b"\x86\xdd":
        return {str(ipaddress.IPv6Address(frame[22:38])), str(ipaddress.IPv6Address(frame[38:54]))}
    return set()


def mirrored_pods(lab: PodLab) -> set[str]:
    """Every pod pings the bridge (v4 and v6); the pods whose addresses show up in copies at the collector."""
    sniffer = lab.popen(lab.col, [*WIRE, "sniff", "vx0", "3"], stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
    pingers = [
        lab.popen(lab.ns(pod), ["ping", "-c", "3", "-i", "0.2", "-W", "1", addr], stdout=subprocess.DEVNULL)
        for pod in lab.pods
        for addr in (BRIDGE4, "2001:db8:10::fe")
    ]
    for p in pingers:
        assert p.wait(timeout=10) == 0
    out, _ = sniffer.communicate(timeout=20)
    seen = set().union(*(inner_hosts(bytes.fromhex(json.loads(line)["hex"])) for line in out.splitlines()))
    by_address = {a: pod for pod, n in lab.pods.items() for a in (f"198.18.10.{n}", f"2001:db8:10::{n:x}")}
    return {by_address[a] for a in seen if a in by_address}


def test_pods_selected_by_netns_name_followed_as_they_come_and_go(podlab: PodLab) -> None:
    lab = podlab
    work = work_dir("pods-")
    config = work / "bpftap.yaml"
    config.write_text(CONFIG.format(prefix=lab.prefix, col=COL4, vni=VNI))
    log = work / "agent.log"
    with log.open("w") as out:
        agent = lab.popen(lab.node, [*BPFTAP, "run", "-c", str(config)], stdout=out, stderr=out)
    try:
        wait_for("the agent and its three pods", lambda: attached(lab) == {"vp-web-1", "vp-web-2", "vp-web-3"})
        wait_for("the collector to resolve", lambda: all(s["via"] for s in status(lab)["sessions"]))
        before = sum(s["packets"] for s in status(lab)["sessions"])
        assert mirrored_pods(lab) == {"web-1", "web-2", "web-3"}
        # 3 pods x 2 families x 3 pings x (request + reply)
        assert sum(s["packets"] for s in status(lab)["sessions"]) - before >= 36

        # a sixth pod that matches, added while running; one of the three deleted
        lab.add_pod("web-4")
        wait_for("the new pod", lambda: "vp-web-4" in attached(lab))
        lab.del_pod("web-2")
        wait_for("the deleted pod to be forgotten", lambda: attached(lab) == {"vp-web-1", "vp-web-3", "vp-web-4"})
        assert mirrored_pods(lab) == {"web-1", "web-3", "web-4"}

        # a changed config file is reloaded without a signal (how a ConfigMap update arrives)
        config.write_text(CONFIG.format(prefix=lab.prefix, col=COL4, vni=VNI).replace("-web-*", "-*b-1"))
        wait_for("the reloaded selector", lambda: attached(lab) == {"vp-web-1", "vp-db-1"})

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    text = log.read_text()
    assert "vp-web-2 is gone" in text and "changed; reloading" in text, text
    assert "vp-web-3 (no longer selected)" in text and "vp-web-1 (no longer" not in text, text
    assert "vp-web-4" in text and "attached" in text, text
    for bad in ("Traceback", "error", "not attached", "could not"):
        assert bad not in text, text

    # nothing left in the node: no internal pair, no qdisc, no tcx program
    links = json.loads(lab.run(lab.node, ["ip", "-j", "link", "show"]).stdout)
    assert not [link["ifname"] for link in links if link["ifname"].startswith("bpftap")]
    assert "clsact" not in lab.run(lab.node, ["tc", "qdisc", "show"]).stdout
    snippet = (
        "import json, socket\n"
        "from bpftap.bpf import tc\n"
        "print(json.dumps([n for i, n in socket.if_nameindex() for d in tc.Direction if tc.tcx_programs(i, d)]))"
    )
    res = lab.run(lab.node, [BPFTAP[0], "-c", snippet])
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr


def test_pod_ip_to_bridge_port(podlab: PodLab) -> None:
    """The Kubernetes path's lookup on a bridge CNI: pod IP -> bridge (route) -> MAC (neighbour) -> port (fdb)."""
    lab = podlab
    for pod in ("web-1", "db-2"):
        assert lab.run(lab.ns(pod), ["ping", "-c", "1", "-W", "1", BRIDGE4]).returncode == 0
        assert lab.run(lab.ns(pod), ["ping", "-c", "1", "-W", "1", "2001:db8:10::fe"]).returncode == 0
    snippet = (
        "import json, sys\n"
        "from pyroute2 import IPRoute\n"
        "from bpftap.agent.k8s import route_iface\n"
        "ipr = IPRoute()\n"
        "print(json.dumps({ip: (route_iface(ip, ipr) or [None])[0] for ip in sys.argv[1:]}))"
    )
    ips = ["198.18.10.1", "2001:db8:10::1", "198.18.10.5", "198.18.10.3", "198.18.12.1"]
    res = lab.run(lab.node, [BPFTAP[0], "-c", snippet, *ips])
    assert res.returncode == 0, res.stderr
    # web-3 (.3) never spoke, so no neighbour entry yet; 198.18.12.1 has no route
    assert json.loads(res.stdout) == {
        "198.18.10.1": "vp-web-1", "2001:db8:10::1": "vp-web-1", "198.18.10.5": "vp-db-2",
        "198.18.10.3": None, "198.18.12.1": None,
    }
