"""The netlink readers that replaced `tc -j filter show` and `ip -n NS -j link show` report what those did.

Each test enters a namespace of its own (tests/netns.py) and compares
bpftap's pyroute2 reading with the JSON of the iproute2 command it replaced,
parsed the way bpftap parsed it before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bpftap.agent import pods
from bpftap.bpf import tc

from ..netns import inside_new_netns

COUNTER_OBJ = Path(__file__).resolve().parents[2] / "build" / "bpf" / "counter.bpf.o"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    return None


pytestmark = [pytest.mark.lab, pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")]


def ifindex(ifname: str) -> int:
    """`ifname`'s index in this thread's namespace (/sys/class/net shows the mount's)."""
    out = subprocess.run(["ip", "-j", "link", "show", ifname], capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["ifindex"])


def tc_json_filters(ifname: str, direction: tc.Direction) -> list[tc.TcFilter]:
    """What tc.tc_filters returned when it parsed `tc -j filter show` (bpftap before pyroute2)."""
    proc = subprocess.run(["tc", "-j", "filter", "show", "dev", ifname, direction.value],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    out = []
    for entry in json.loads(proc.stdout):
        opts = entry.get("options") or {}
        if "handle" not in opts and entry.get("kind") == "bpf":
            continue
        prog = opts.get("prog") or {}
        handle = opts.get("handle", "0")
        out.append(tc.TcFilter(kind=entry.get("kind", "?"), priority=int(entry.get("pref", 0)),
                               handle=int(handle, 16) if isinstance(handle, str) else int(handle),
                               prog_id=int(prog.get("id", 0)), name=str(prog.get("name", opts.get("bpf_name", "")))))
    return out


def test_tc_filters_as_tc_shows_them() -> None:
    if not COUNTER_OBJ.exists():
        pytest.skip(f"{COUNTER_OBJ} missing: make build")
    with inside_new_netns("bttcf", [["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                                    ["link", "set", "d0", "up"]]):
        assert tc.tc_filters("d0", tc.Direction.INGRESS) == []  # no clsact yet
        assert tc.tc_filters("nosuch0", tc.Direction.INGRESS) == []  # no such interface
        subprocess.run(["tc", "qdisc", "add", "dev", "d0", "clsact"], check=True)
        for where, prio, handle in (("ingress", "3", ["handle", hex(tc.FILTER_HANDLE)]), ("ingress", "5", []),
                                    ("egress", "2", [])):
            subprocess.run(["tc", "filter", "add", "dev", "d0", where, "prio", prio, *handle, "bpf", "da", "obj",
                            str(COUNTER_OBJ), "sec", "tc"], check=True)
        for direction in tc.Direction:
            ours = tc.tc_filters("d0", direction)
            assert ours == tc_json_filters("d0", direction), direction
            assert all(f.prog_id and f.name == "counter_ingress" for f in ours)
        assert [(f.priority, f.handle) for f in tc.tc_filters("d0", tc.Direction.INGRESS)] == [
            (3, tc.FILTER_HANDLE), (5, 1)]
        assert tc.others_on_hook("d0", ifindex("d0"), tc.Direction.EGRESS) == [
            f"bpf filter prio 2 counter_ingress (id {tc.tc_filters('d0', tc.Direction.EGRESS)[0].prog_id})"]


def test_pod_peer_index_as_ip_shows_it() -> None:
    with inside_new_netns("btpod") as pod, inside_new_netns("btnode") as node:
        subprocess.run(["ip", "link", "add", "veth-p", "type", "veth", "peer", "name", "eth0", "netns", pod],
                       check=True)
        subprocess.run(["ip", "-n", pod, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2"], check=True)
        link = json.loads(subprocess.run(["ip", "-n", pod, "-j", "link", "show", "eth0"], capture_output=True,
                                         text=True, check=True).stdout)[0]
        found = pods.pod_peer_index(pod)
        assert found == (link["ifindex"], link["link_index"])
        assert found[1] == ifindex("veth-p")
        assert pods.pod_peer_index(pod, "eth1") is None  # its peer is in the same namespace
        assert pods.pod_peer_index(pod, "eth9") is None  # no such interface
        assert pods.pod_peer_index(node + "-gone") is None  # no such namespace ...
        assert not Path(f"/run/netns/{node}-gone").exists()  # ... and none made
