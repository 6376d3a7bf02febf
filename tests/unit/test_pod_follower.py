"""PodFollower against a fake host (the `PodHost` protocol) and a fake netlink socket: no kernel, no root.

The fake node: network namespaces are files in a temporary run directory,
each pod's eth0 -> veth peer pair comes from a table (the part `ip -n NS
link show eth0` / pyroute2 in the namespace reads), and the host's links are
a dict behind a tiny IPRoute look-alike that raises NetlinkError(ENODEV)
for a missing index, as the kernel does.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from bpftap.agent import pods
from bpftap.agent.hostiface import HostIface
from bpftap.agent.k8s import PodIndex, PodWatch
from bpftap.bpf import tc
from bpftap.config import Config, Direction, PodSelector, parse_config
from bpftap.errors import BpfError


class Msg:
    """Enough of a pyroute2 message: msg["index"] and get_attr()."""

    def __init__(self, index: int, **attrs: Any) -> None:
        self.index, self.attrs = index, attrs

    def __getitem__(self, key: str) -> int:
        assert key == "index"
        return self.index

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


@dataclass
class Link:
    name: str
    kind: str = "veth"
    peer: int = 0  # IFLA_LINK


class FakeIPRoute:
    def __init__(self) -> None:
        self.links: dict[int, Link] = {1: Link("eth0", kind="")}
        self.broken: set[int] = set()  # indexes whose "get" fails with another netlink error

    def get_links(self) -> list[Msg]:
        return [Msg(i, IFLA_IFNAME=link.name) for i, link in self.links.items()]

    def link(self, command: str, index: int) -> list[Msg]:
        assert command == "get"
        if index in self.broken:
            raise NetlinkError(errno.EPERM)
        if index not in self.links:
            raise NetlinkError(errno.ENODEV)
        link = self.links[index]
        return [Msg(index, IFLA_IFNAME=link.name, IFLA_LINK=link.peer,
                    IFLA_LINKINFO=Msg(0, IFLA_INFO_KIND=link.kind) if link.kind else None)]


@dataclass
class FakeHost:
    """A PodHost that records what it is asked to do."""

    config: Config
    sources: dict[str, int] = field(default_factory=dict)
    attachments: list[tc.Attachment] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # ifnames whose attach fails
    apply_fails: bool = False

    def set_sources(self, ifindexes: dict[str, int]) -> None:
        self.sources = dict(ifindexes)

    def attach_source(self, ifname: str, ifindex: int, hook: tc.Direction) -> tc.Attachment:
        self.calls.append(("attach", ifname, hook.value))
        if ifname in self.refuse:
            raise BpfError(f"attach tcx {hook.value}", ifname, errno.ENODEV)
        att = tc.Attachment(ifname, ifindex, hook, tc.Mode.TC, pods.agent_prog(hook), priority=1,
                            owns_qdisc=ifname.endswith("q"))
        self.attachments.append(att)
        return att

    def detach_sources(self, attachments: list[tc.Attachment]) -> None:
        for att in attachments:
            self.calls.append(("detach", att.ifname, att.hook))
            self.attachments.remove(att)

    def attach_inside(self, netns: str, host_ifindex: int, ingress: bool, egress: bool) -> Any:
        self.calls.append(("inside", netns, host_ifindex, ingress, egress))
        return SimpleNamespace(node_ifname=f"bpi{host_ifindex}", node_ifindex=100 + host_ifindex,
                               close=lambda: self.calls.append(("inside closed", netns)))

    def reapply(self) -> None:
        self.calls.append(("reapply",))
        if self.apply_fails:
            raise BpfError("update map", "rules_v4", errno.E2BIG)


class Node:
    """Namespaces in a run directory, each with a pod eth0 whose veth peer is on the host."""

    def __init__(self, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run_dir, self.ipr = run_dir, FakeIPRoute()
        self.peers: dict[str, tuple[int, int]] = {}
        self.clsact_removed: list[str] = []
        monkeypatch.setattr(pods, "pod_peer_index", self.peers.get)
        monkeypatch.setattr(tc, "others_on_hook", lambda ifname, ifindex, hook: [])
        monkeypatch.setattr(tc, "destroy_clsact", lambda ifname, ifindex: self.clsact_removed.append(ifname))

    def add_pod(self, netns: str, host_ifname: str, host_ifindex: int, pod_ifindex: int = 2) -> None:
        (self.run_dir / netns).touch()
        self.peers[netns] = (pod_ifindex, host_ifindex)
        self.ipr.links[host_ifindex] = Link(host_ifname, peer=pod_ifindex)

    def delete_pod(self, netns: str) -> None:
        """`ip netns del`: the namespace goes, and its veth with it."""
        (self.run_dir / netns).unlink()
        del self.ipr.links[self.peers.pop(netns)[1]]


def follower_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *sources: dict[str, Any],
                 static: dict[str, int] | None = None) -> tuple[pods.PodFollower, FakeHost, Node]:
    node = Node(tmp_path, monkeypatch)
    host = FakeHost(parse_config({"sources": list(sources)}, "bpftap.yaml"))
    follower = pods.PodFollower(host, node.ipr, static or {}, run_dir=str(tmp_path))  # type: ignore[arg-type]
    return follower, host, node


def hooks(host: FakeHost) -> list[tuple[str, str]]:
    return sorted((a.ifname, a.hook) for a in host.attachments)


def test_pods_appear_change_and_disappear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "web-*"}, "direction": "ingress"},
                                        static={"eth0": 1})
    assert follower.sync() is False and host.calls == []  # nothing selected: nothing done, no reapply
    node.add_pod("web-1", "veth-w1", 11)
    node.add_pod("db-1", "veth-d1", 21)  # not selected
    assert follower.sync() is True
    assert hooks(host) == [("veth-w1", "ingress")]
    assert host.sources == {"eth0": 1, "veth-w1": 11}  # the static sources stay
    assert host.calls[-1] == ("reapply",)
    host.calls.clear()
    assert follower.sync() is False and host.calls == []  # unchanged: nothing done

    # the config changes (a reload): the same pod now both ways, another pod joins
    host.config = parse_config({"sources": [{"pods": {"netns": "web-*"}}, {"pods": {"netns": "db-*"},
                                                                             "direction": "egress"}]}, "bpftap.yaml")
    assert follower.sync() is True
    assert host.calls[:1] == [("detach", "veth-w1", "ingress")]  # the direction changed: detached, attached again
    assert hooks(host) == [("veth-d1", "egress"), ("veth-w1", "egress"), ("veth-w1", "ingress")]
    assert follower.attached[("veth-w1", 11)].direction == Direction.BOTH
    assert host.sources == {"eth0": 1, "veth-w1": 11, "veth-d1": 21}

    # a pod is deleted: its veth went with the namespace; nothing is left attached or named as a source
    host.calls.clear()
    node.delete_pod("web-1")
    assert follower.sync() is True
    assert ("detach", "veth-w1", "ingress") in host.calls and ("detach", "veth-w1", "egress") in host.calls
    assert hooks(host) == [("veth-d1", "egress")] and host.sources == {"eth0": 1, "veth-d1": 21}

    # no longer selected (the pod is still there): detached
    host.config = parse_config({"sources": [{"pods": {"netns": "web-*"}}]}, "bpftap.yaml")
    assert follower.sync() is True
    assert host.attachments == [] and host.sources == {"eth0": 1}


def test_a_pod_named_as_a_static_source_is_left_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "*"}}, static={"veth-w1": 11})
    node.add_pod("web-1", "veth-w1", 11)
    assert follower.sync() is False and host.attachments == []


def test_netlink_errors_mean_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "*"}})
    node.add_pod("web-1", "veth-w1", 11)
    node.ipr.broken.add(11)  # the peer cannot be read: not attached, no exception
    assert follower.sync() is False and host.attachments == []
    node.ipr.broken.clear()
    node.peers["web-2"] = (2, 99)  # eth0's peer index names no interface here (ENODEV)
    (tmp_path / "web-2").touch()
    node.ipr.links[12] = Link("veth-x", peer=7)  # a veth here whose peer is not that pod's eth0
    node.peers["web-3"] = (2, 12)
    (tmp_path / "web-3").touch()
    node.ipr.links[13] = Link("br0", kind="bridge", peer=2)  # not a veth
    node.peers["web-4"] = (2, 13)
    (tmp_path / "web-4").touch()
    assert follower.sync() is True
    assert hooks(host) == [("veth-w1", "egress"), ("veth-w1", "ingress")]

    # the interface vanishes and its index cannot be read back: treated as gone, no clsact to remove
    with caplog.at_level(logging.INFO, logger="bpftap.agent.pods"):
        node.delete_pod("web-1")
        assert follower.sync() is True
    assert host.attachments == [] and node.clsact_removed == []
    assert "pod web-1: veth-w1 is gone; its attachments went with it" in caplog.text


def test_attach_and_apply_errors_are_logged_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "*"}})
    node.add_pod("web-1", "veth-w1", 11)
    node.add_pod("web-2", "veth-w2", 12)
    host.refuse.add("veth-w2")
    host.apply_fails = True
    with caplog.at_level(logging.WARNING, logger="bpftap.agent.pods"):
        assert follower.sync() is True
    assert "pod web-2: not attached to veth-w2: attach tcx ingress on veth-w2" in caplog.text
    assert "pods changed but the rules could not be re-applied: update map on rules_v4" in caplog.text
    assert hooks(host) == [("veth-w1", "egress"), ("veth-w1", "ingress")]
    assert host.sources == {"veth-w1": 11}  # the one that failed is not a source
    host.refuse.clear()
    host.apply_fails = False
    assert follower.sync() is True  # tried again
    assert [h[0] for h in hooks(host)] == ["veth-w1", "veth-w1", "veth-w2", "veth-w2"]


def test_a_half_done_attach_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingress attached, egress refused: ingress is detached again, and the clsact qdisc it made removed."""
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "*"}})
    node.add_pod("web-1", "veth-q", 11)
    real = host.attach_source

    def egress_fails(ifname: str, ifindex: int, hook: tc.Direction) -> tc.Attachment:
        if hook is tc.Direction.EGRESS:
            raise BpfError("attach tc egress", ifname, errno.EBUSY)
        return real(ifname, ifindex, hook)

    monkeypatch.setattr(host, "attach_source", egress_fails)
    assert follower.sync() is True
    assert host.attachments == [] and follower.attached == {} and node.clsact_removed == ["veth-q"]
    assert host.sources == {}


def test_close_detaches_unless_handing_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"netns": "*"}})
    node.add_pod("web-1", "veth-q", 11)
    follower.sync()
    follower.close(detach=False)
    assert len(host.attachments) == 2 and node.clsact_removed == []
    follower.close()
    assert host.attachments == [] and node.clsact_removed == ["veth-q"]
    follower.close()  # idempotent


def test_kubernetes_selectors_go_through_the_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"namespace": "shop"}})
    node.ipr.links[11] = Link("cali1", peer=2)

    class Watch:
        def __init__(self) -> None:
            self.stopped = False

        def host_ifaces(self, selector: PodSelector, ipr: Any, by_ip: Any = None) -> list[HostIface]:
            assert selector == PodSelector(namespace="shop") and ipr is node.ipr
            # cali9 is not an interface here (the pod's route went away): left out
            return [HostIface("cali1", 11, "shop/web-1"), HostIface("cali9", 19, "shop/web-9")]

        def stop(self) -> None:
            self.stopped = True

    watch = follower.watch = Watch()  # type: ignore[assignment]
    assert follower.sync() is True
    assert hooks(host) == [("cali1", "egress"), ("cali1", "ingress")]
    follower.close()
    assert watch.stopped and follower.watch is None and host.attachments == []


def test_kubernetes_pods_are_found_by_the_namespace_holding_their_ip_and_go_inside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pod whose IP a named namespace holds is attached inside it (no route needed: Cilium's eBPF host routing
    routes by cilium_host; of two holders, the one whose eth0's peer is here); one found only by route is attached
    on its host side, with a warning."""
    follower, host, node = follower_for(tmp_path, monkeypatch, {"pods": {"namespace": "shop"}, "attach": "inside"})
    node.add_pod("cni-1234", "lxc1", 11)
    node.ipr.links[12] = Link("cali2", peer=2)
    scans: list[list[str]] = []

    def addresses(names: list[str], run_dir: str) -> dict[str, list[str]]:
        scans.append(names)
        return {"2001:db8:20::1": ["cni-0042", "cni-1234"]}  # cni-0042: a stale sandbox, its eth0 no veth to here

    monkeypatch.setattr(pods, "addresses", addresses)
    index = PodIndex()
    for name, ip in (("web-1", "2001:db8:20:0::1"), ("web-2", "198.18.20.2")):
        index.apply("ADDED", SimpleNamespace(
            metadata=SimpleNamespace(uid=name, namespace="shop", name=name, labels={}, deletion_timestamp=None),
            spec=SimpleNamespace(host_network=False), status=SimpleNamespace(pod_ip=ip, phase="Running")))
    watch = PodWatch(None, "node-1", lambda: None, lambda ip, ipr: ("cali2", 12) if ip == "198.18.20.2" else None)
    watch.index = index
    follower.watch = watch
    with caplog.at_level("WARNING"):
        assert follower.sync() is True
    assert ("inside", "cni-1234", 11, True, True) in host.calls
    assert hooks(host) == [("cali2", "egress"), ("cali2", "ingress")]
    assert "pod shop/web-2: no namespace in" in caplog.text and "cannot be attached inside" in caplog.text
    assert host.sources == {"lxc1": 11, "bpi11": 111, "cali2": 12}
    assert follower.sync() is False and len(scans) == 1  # a miss (web-2) rescans at most every 5 s
    follower.close()
    assert ("inside closed", "cni-1234") in host.calls
