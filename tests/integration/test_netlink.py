"""bpftap.netlink inside the lab's tap namespace: next-hop resolution and the internal pair.

Each check runs ``python -m bpftap.netlink ...`` under ``ip netns exec`` (the
module works on the namespace of its process) and reads the JSON it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bpftap.lab import JUMBO_MTU, Lab
from bpftap.netlink import RouteWatch

from ..netns import inside_new_netns
from .agent_lab import Agent


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode:
        return "`ip netns` is unavailable"
    return None


pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def nl(lab: Lab, *args: str, host: str = "tap") -> tuple[int, Any]:
    """Run the netlink CLI in `host`'s namespace: (exit code, parsed JSON)."""
    res = lab.run(host, [sys.executable, "-m", "bpftap.netlink", *args], check=False)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def _counters(lab: Lab, host: str) -> dict[str, int]:
    """IP-layer counters of `host` (/proc/net/snmp and snmp6 are per namespace)."""
    out: dict[str, int] = {}
    lines = lab.run(host, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto = names.split(":")[0]
        out.update({proto + k: int(v) for k, v in zip(names.split()[1:], values.split()[1:], strict=False)})
    for line in lab.run(host, ["cat", "/proc/net/snmp6"]).stdout.splitlines():
        key, value = line.split()
        out[key] = int(value)
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_resolve_collector_from_an_empty_neighbour_table(lab: Lab, family: int) -> None:
    remote = lab.col.ip4 if family == 4 else lab.col.ip6
    src = lab.tap.eth2.ip4 if family == 4 else lab.tap.eth2.ip6
    lab.run(lab.tap, ["ip", "neigh", "flush", "all"])
    assert "lladdr" not in lab.run(lab.tap, ["ip", "neigh", "show", "to", str(remote)]).stdout
    before = _counters(lab, "col")

    code, first = nl(lab, "resolve", str(remote))
    assert code == 1 and first == {"error": f"neighbour {remote} on eth2 not resolved yet"}
    deadline = time.monotonic() + 3
    code, hop = nl(lab, "resolve", str(remote))
    while code and time.monotonic() < deadline:
        time.sleep(0.05)
        code, hop = nl(lab, "resolve", str(remote))
    _, links = nl(lab, "links")
    assert hop == {"ifindex": links["eth2"], "ifname": "eth2", "src": str(src),
                   "src_mac": lab.tap.eth2.mac, "dst_mac": lab.col.eth0.mac, "mtu": 9000}

    # resolution went out as ARP / neighbour solicitation only, no datagram of ours
    after = _counters(lab, "col")
    if family == 4:  # ARP is not IP: col received no IPv4 packet at all
        assert after["IpInReceives"] == before["IpInReceives"]
    else:
        assert after["Icmp6InNeighborSolicits"] > before["Icmp6InNeighborSolicits"]
        for key in ("Udp6InDatagrams", "Udp6NoPorts", "Icmp6InEchos"):
            assert after[key] == before[key], key


def test_stale_neighbour_is_used_and_reconfirmed(lab: Lab) -> None:
    # copies sent by BPF never refresh the entry, so resolve itself re-probes a STALE one
    remote = str(lab.col.ip4)
    lab.run(lab.tap, ["ip", "neigh", "replace", remote, "lladdr", lab.col.eth0.mac,
                      "nud", "stale", "dev", "eth2"])
    code, hop = nl(lab, "resolve", remote)
    assert code == 0 and hop["dst_mac"] == lab.col.eth0.mac
    state = lab.run(lab.tap, ["ip", "neigh", "show", "to", remote, "dev", "eth2"]).stdout.split()
    assert state[-1] in ("DELAY", "PROBE", "REACHABLE"), state


def test_resolve_through_a_gateway_uses_the_gateway_mac(lab: Lab) -> None:
    code, hop = nl(lab, "resolve", "--wait", "3", str(lab.col.ip6), host="src")
    assert code == 0, hop
    assert (hop["ifname"], hop["src"], hop["dst_mac"], hop["mtu"]) == \
        ("eth0", str(lab.src.ip6), lab.tap.eth0.mac, 1500)


def test_resolve_without_a_route(lab: Lab) -> None:
    assert nl(lab, "resolve", "198.18.99.1") == (1, {"error": "no route to 198.18.99.1"})
    assert nl(lab, "resolve", "--wait", "1", "2001:db8:99::1") == \
        (1, {"error": "no route to 2001:db8:99::1"})


def test_resolve_through_a_device_without_mac(lab: Lab) -> None:
    lab.run(lab.tap, ["ip", "tuntap", "add", "dev", "bttun0", "mode", "tun"])
    try:
        lab.run(lab.tap, ["ip", "addr", "add", "198.18.50.1/24", "dev", "bttun0"])
        lab.run(lab.tap, ["ip", "link", "set", "bttun0", "up"])
        code, out = nl(lab, "resolve", "198.18.50.2")
        assert code == 1 and out["error"].startswith("bttun0 has no MAC address (not Ethernet")
    finally:
        lab.run(lab.tap, ["ip", "link", "del", "bttun0"])


def _pair_state(lab: Lab, name: str) -> dict[str, Any]:
    link = json.loads(lab.run(lab.tap, ["ip", "-j", "addr", "show", "dev", name]).stdout)[0]
    detail = json.loads(lab.run(lab.tap, ["ip", "-d", "-j", "link", "show", "dev", name]).stdout)[0]
    return {"flags": set(link["flags"]), "mtu": link["mtu"], "inet6": [a for a in link["addr_info"]
                                                  if a["family"] == "inet6"],
            "queues": (detail["num_tx_queues"], detail["num_rx_queues"])}


def test_internal_pair_recreate_and_delete(lab: Lab) -> None:
    code, first = nl(lab, "ensure-pair")
    assert code == 0, first
    code, second = nl(lab, "ensure-pair")  # a stale pair is replaced, not an error
    assert code == 0, second
    try:
        _, links = nl(lab, "links")
        assert second == [links["bpftap0"], links["bpftap1"]] and second != first
        features = lab.run(lab.tap, ["ethtool", "-k", "bpftap0"]).stdout
        for feature in ("tx-checksumming", "tcp-segmentation-offload", "scatter-gather",
                        "generic-segmentation-offload", "generic-receive-offload",
                        "tx-vlan-offload", "tx-vlan-stag-hw-insert"):
            assert f"\n{feature}: off" in features, feature
        for name in ("bpftap0", "bpftap1"):
            state = _pair_state(lab, name)
            assert {"UP", "NOARP"} <= state["flags"] and "MULTICAST" not in state["flags"]
            assert state["mtu"] == 65535
            assert state["queues"] == (4, 4)  # a NAPI ring per queue, for copies and fragments to spread over
            assert state["inet6"] == []
        eths = {name: links[name] for name in ("eth0", "eth1", "eth2")}
        assert nl(lab, "match", "*") == (0, eths)  # no lo, no internal pair
        assert nl(lab, "match", "eth[12]", "nomatch*") == (0, {k: eths[k] for k in ("eth1", "eth2")})
    finally:
        assert nl(lab, "delete-pair") == (0, None)
    _, links = nl(lab, "links")
    assert "bpftap0" not in links and "bpftap1" not in links
    assert nl(lab, "delete-pair") == (0, None)  # absent: no error


def test_internal_pair_never_deletes_a_foreign_device(lab: Lab) -> None:
    lab.run(lab.tap, ["ip", "tuntap", "add", "dev", "bpftap0", "mode", "tap"])
    try:
        code, out = nl(lab, "ensure-pair")
        assert code == 1 and "bpftap0 exists and is not a veth" in out["error"]
        _, links = nl(lab, "links")
        assert "bpftap0" in links and "bpftap1" not in links
    finally:
        lab.run(lab.tap, ["ip", "link", "del", "bpftap0"])


def test_route_watch_sees_links_addresses_routes_and_neighbours() -> None:
    """What `due` says, in a namespace of the test's own where nothing else happens."""
    with inside_new_netns("btw"):
        watch = RouteWatch(every=3600)
        try:
            assert watch.due()  # the first look
            assert not watch.due() and watch.due(waiting=True)
            for change in (["link", "add", "w0", "type", "veth", "peer", "name", "w1"],
                           ["link", "set", "w0", "up"],
                           ["addr", "add", "198.18.60.1/24", "dev", "w0"],
                           ["route", "add", "198.18.61.0/24", "via", "198.18.60.2"],
                           ["neigh", "add", "198.18.60.2", "lladdr", "02:00:00:00:00:02", "dev", "w0"],
                           ["-6", "route", "add", "2001:db8:61::/64", "dev", "w0"]):
                assert not watch.due(), change
                subprocess.run(["ip", *change], check=True)
                assert watch.due(), change
            assert not watch.due()
        finally:
            watch.close()
        watch = RouteWatch(every=0.2)
        try:
            assert watch.due() and not watch.due()
            time.sleep(0.3)
            assert watch.due() and not watch.due()  # every `every` seconds, changes or not
        finally:
            watch.close()


FOLLOW = """
sources:
  - interface: eth0
sessions:
  - {{name: c, remote: "{remote}", vni: 7}}
rules:
  - {{number: 10, sessions: [c]}}
"""


def test_a_running_agent_follows_the_route_and_the_link(lab: Lab) -> None:
    """A new route's MTU, then the link's, reach the session at once (not at the 30 s re-check)."""
    remote = str(lab.col.ip4)
    agent = Agent(lab, FOLLOW.format(remote=remote))
    try:
        for change, mtu in ((["route", "add", f"{remote}/32", "dev", "eth2", "mtu", "1300"], 1300),
                            (["route", "del", f"{remote}/32"], JUMBO_MTU),
                            (["link", "set", "eth2", "mtu", "1400"], 1400)):
            seen = len(agent.output())
            lab.run(lab.tap, ["ip", *change])
            deadline = time.monotonic() + 10
            while f"mtu {mtu})" not in agent.output()[seen:]:
                assert time.monotonic() < deadline, f"{change}: the agent did not follow\n{agent.output()}"
                time.sleep(0.2)
    finally:
        lab.run(lab.tap, ["ip", "link", "set", "eth2", "mtu", str(JUMBO_MTU)])
        assert agent.stop() == 0, agent.output()
