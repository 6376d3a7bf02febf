"""Pod sources: find each selected pod's host-side interface and follow pods as they come and go.

A source `pods: {netns: GLOB}` selects network namespaces by name (those of
/run/netns, as `ip netns list` shows them). For each one, the pod's eth0
there is one end of a veth pair; its peer, found through eth0's IFLA_LINK
(`link_index`), is the host-side interface in the agent's namespace, and
that is where bpftap attaches. The peer is checked from both sides (a veth
here whose own IFLA_LINK is that eth0), so a stray index never picks a
wrong interface. A source `pods: {namespace: NS, labels: {...}}` selects
Kubernetes pods through bpftap.agent.k8s: a pod is the named namespace
that holds its IP and whose eth0's peer is here (`addresses()`, rescanned
when the namespaces change or an IP is not found, at most every
RESCAN_SECONDS), else the interface the node's route to its IP names (then
it can only be attached on the host side).

`PodFollower.sync()` runs once a second from the agent's loop: it attaches
to interfaces of new pods, forgets attachments whose interface vanished
(deleting a namespace deletes its veth, and a tcx link or a clsact filter
goes with the device: nothing to undo, only logged), and then re-applies
the rules so `interface:` rules see the new ifindexes. It reaches the agent
only through `PodHost` (five members), so tests drive it with a fake host.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpftap import abi
from bpftap.agent import inside
from bpftap.agent.hostiface import HostIface
from bpftap.agent.k8s import PodWatch
from bpftap.bpf import tc
from bpftap.config import Config, Direction, Source
from bpftap.errors import BpftapError

log = logging.getLogger("bpftap.agent.pods")

NETNS_DIR = "/run/netns"
POD_IFNAME = "eth0"
RESCAN_SECONDS = 5.0
HOOKS = ((tc.Direction.INGRESS, Direction.INGRESS), (tc.Direction.EGRESS, Direction.EGRESS))


def netns_names(run_dir: str = NETNS_DIR) -> list[str]:
    """Names of the named network namespaces (`ip netns list`); none if `run_dir` is missing."""
    try:
        return sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return []


def pod_peer_index(netns: str, ifname: str = POD_IFNAME) -> tuple[int, int] | None:
    """(ifindex of `ifname` in `netns`, ifindex of its veth peer), or None.

    None if the namespace or the interface is gone, or the interface has no
    peer in another namespace (not a veth whose other end left the pod).
    """
    if not os.path.exists(os.path.join(NETNS_DIR, netns)):
        return None  # gone: checked first, as pyroute2 leaks a half-made socket when it fails to enter one
    try:
        # a socket in the namespace (pyroute2 opens it there); flags 0: never create a missing namespace
        with IPRoute(netns=netns, flags=0) as ipr:
            link = ipr.link("get", ifname=ifname)[0]
    except (OSError, NetlinkError):  # the namespace is gone (ENOENT, EINVAL), or the interface (ENODEV)
        return None
    peer = link.get_attr("IFLA_LINK")
    if not peer or link.get_attr("IFLA_LINK_NETNSID") is None:  # `ip -j` shows link_index only then
        return None
    return int(link["index"]), int(peer)


def addresses(names: Iterable[str], run_dir: str = NETNS_DIR) -> dict[str, list[str]]:
    """Each address (compressed) held in the named namespaces `names`, mapped to the namespaces that hold it: more
    than one when a stale namespace (a sandbox a runtime failed to delete) keeps an IP since given to a new pod."""
    found: dict[str, list[str]] = {}
    for name in names:
        if not os.path.exists(os.path.join(run_dir, name)):
            continue  # gone (see pod_peer_index)
        try:
            with IPRoute(netns=name, flags=0) as ipr:
                msgs = ipr.get_addr()
        except (OSError, NetlinkError):
            continue
        for msg in msgs:
            # IPv4 names its own address IFA_LOCAL, IPv6 only IFA_ADDRESS
            addr = ipaddress.ip_address(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            if not addr.is_loopback and not addr.is_link_local:
                found.setdefault(addr.compressed, []).append(name)
    return found


def is_pod_here(netns: str, ipr: IPRoute) -> bool:
    """Whether the eth0 of `netns` is a veth whose peer is in the namespace of `ipr`."""
    pair = pod_peer_index(netns)
    return pair is not None and host_side(*pair, ipr) is not None


def host_side(pod_ifindex: int, peer_ifindex: int, ipr: IPRoute) -> str | None:
    """The name of veth `peer_ifindex` here if its own peer is `pod_ifindex`, else None."""
    try:
        msg = ipr.link("get", index=peer_ifindex)[0]
    except NetlinkError:  # ENODEV: no such index (any other error: not one we can read either)
        return None
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind != "veth" or msg.get_attr("IFLA_LINK") != pod_ifindex:
        return None
    return str(msg.get_attr("IFLA_IFNAME"))


class PodHost(Protocol):
    """What PodFollower needs of the agent (`bpftap.agent.daemon.Agent` is the real one)."""

    @property
    def config(self) -> Config:
        """The live config (a reload replaces it): its sources say which pods to follow."""
        ...

    def set_sources(self, ifindexes: dict[str, int]) -> None:
        """Make these the source interfaces, by name: rules compile against them, copies name them."""

    def attach_source(self, ifname: str, ifindex: int, hook: tc.Direction) -> tc.Attachment:
        """Put the source program of `hook` on `ifname` and count it among the host's attachments.

        Raises BpftapError (the interface vanished, the kernel refused).
        """
        ...

    def detach_sources(self, attachments: list[tc.Attachment]) -> None:
        """Take `attachments` out of the host's attachments and close them."""

    def attach_inside(self, netns: str, host_ifindex: int, ingress: bool, egress: bool) -> inside.InsidePod:
        """Attach inside the pod `netns` (bpftap.agent.inside.attach); the caller closes the result.

        Raises BpftapError (the pod vanished, the kernel refused).
        """
        ...

    def reapply(self) -> None:
        """Compile and apply the live config against the current sources, and record the agent's state.

        Raises BpftapError if the rules cannot be applied (the running ones stay).
        """


@dataclass
class _Attached:
    iface: HostIface
    direction: Direction
    attachments: list[tc.Attachment] = field(default_factory=list)
    owns_qdisc: bool = False
    inside: inside.InsidePod | None = None  # attach: inside (bpftap.agent.inside); then `attachments` is empty


class PodFollower:
    """Keeps the agent attached to the host-side interfaces of the pods its config selects."""

    def __init__(self, host: PodHost, ipr: IPRoute, static: dict[str, int], run_dir: str = NETNS_DIR) -> None:
        """`ipr`: the host's netlink socket (used from its thread only); `static`: the `interface:` sources,
        fixed at start, that pod interfaces join."""
        self.host, self.ipr, self.run_dir = host, ipr, run_dir
        self.static = dict(static)
        self.attached: dict[tuple[str, int], _Attached] = {}
        self._netns_cache: dict[str, HostIface] = {}
        self._by_address: dict[str, list[str]] = {}  # pod IP -> the netns names holding it (addresses())
        self._scanned: tuple[list[str], float] = ([], 0.0)  # the names scanned, and when
        self.attach_of: dict[tuple[str, int], str] = {}  # the `attach:` of the first source selecting each pod
        self.watch: PodWatch | None = None

    def start(self) -> None:
        """Start the Kubernetes watch if a selector needs it, and attach to the pods there now.

        Raises ConfigError if a Kubernetes selector is configured but the
        agent cannot watch the API (no NODE_NAME, no `kubernetes` package).
        """
        config = self.host.config
        if any(s.pods is not None and s.pods.netns is None for s in config.sources):
            self.watch = PodWatch.from_environment(config.path)
            self.watch.start()
        self.sync()

    # --- what should be attached ------------------------------------------------------------
    def desired(self, sources: Iterable[Source], ipr: IPRoute) -> dict[tuple[str, int], tuple[HostIface, Direction]]:
        """Host interfaces of every selected pod now, with the union of directions asked for each."""
        selected = [(src, src.pods) for src in sources if src.pods is not None]
        if not selected:
            return {}  # (no need to list every link each second)
        present = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        found: dict[tuple[str, int], tuple[HostIface, Direction]] = {}
        names = netns_names(self.run_dir)
        for src, pods in selected:
            ifaces: Sequence[HostIface | None]
            if pods.netns is not None:
                ifaces = [self._netns_iface(ns, present, ipr) for ns in names if fnmatch.fnmatchcase(ns, pods.netns)]
            elif self.watch is not None:
                ifaces = self.watch.host_ifaces(pods, ipr, lambda ip: self._ip_iface(ip, names, present, ipr))
            else:
                ifaces = []
            for iface in ifaces:
                if iface is None or present.get(iface.ifindex) != iface.ifname or iface.ifname in self.static:
                    continue
                key = (iface.ifname, iface.ifindex)
                if key not in found:
                    self.attach_of[key] = src.attach
                found[key] = (iface, (found[key][1] if key in found else Direction(0)) | src.direction)
        self._netns_cache = {ns: i for ns, i in self._netns_cache.items() if ns in names}
        return found

    def _ip_iface(self, ip: str, names: list[str], present: dict[int, str], ipr: IPRoute) -> HostIface | None:
        """The pod that holds `ip` in a named namespace (rescanning them if they changed, or at times on a miss)."""
        ip = ipaddress.ip_address(ip).compressed
        scanned, when = self._scanned
        if names != scanned or (ip not in self._by_address and time.monotonic() - when > RESCAN_SECONDS):
            self._by_address, self._scanned = addresses(names, self.run_dir), (names, time.monotonic())
        # of several holders, the pod is the one whose eth0's peer is here
        return next((i for ns in self._by_address.get(ip, ()) if (i := self._netns_iface(ns, present, ipr))), None)

    def _netns_iface(self, netns: str, present: dict[int, str], ipr: IPRoute) -> HostIface | None:
        cached = self._netns_cache.get(netns)
        if cached is not None and present.get(cached.ifindex) == cached.ifname:
            return cached
        pair = pod_peer_index(os.path.basename(netns))
        name = host_side(*pair, ipr) if pair else None
        if name is None or pair is None:
            self._netns_cache.pop(netns, None)
            return None
        iface = HostIface(name, pair[1], netns, netns)
        self._netns_cache[netns] = iface
        return iface

    # --- following ----------------------------------------------------------------------
    def sync(self) -> bool:
        """Attach to new pods' interfaces, forget vanished ones, re-apply the rules; True if anything changed.

        An interface that vanishes between lookup and attach is skipped
        (logged) and tried again on the next call; a failed re-apply is
        logged and the running rules stay.
        """
        want = self.desired(self.host.config.sources, self.ipr)
        gone = [k for k, a in self.attached.items() if k not in want or want[k][1] != a.direction]
        new = [k for k in want if k not in self.attached or k in gone]
        if not gone and not new:
            return False
        for key in gone:
            self._drop(self.attached.pop(key), vanished=key not in want)
        self._update_sources([want[k][0] for k in new])
        for key in new:
            iface, direction = want[key]
            try:
                self.attached[key] = self._attach(iface, direction)
            except BpftapError as exc:
                log.warning("pod %s: not attached to %s: %s (trying again)", iface.pod, iface.ifname, exc)
        self._update_sources([])
        try:
            self.host.reapply()
        except BpftapError as exc:
            log.error("pods changed but the rules could not be re-applied: %s", exc)
        return True

    def _update_sources(self, adding: list[HostIface]) -> None:
        names = dict(self.static)
        names.update({a.iface.ifname: a.iface.ifindex for a in self.attached.values()})
        names.update({a.inside.node_ifname: a.inside.node_ifindex for a in self.attached.values() if a.inside})
        names.update({i.ifname: i.ifindex for i in adding})
        self.host.set_sources(names)

    def _attach(self, iface: HostIface, direction: Direction) -> _Attached:
        done = _Attached(iface, direction)
        key = (iface.ifname, iface.ifindex)
        if inside.wants_inside(self.attach_of.get(key, "host"), iface.ifname, iface.ifindex):
            if iface.netns is not None:
                done.inside = self.host.attach_inside(iface.netns, iface.ifindex, bool(direction & Direction.INGRESS),
                                                      bool(direction & Direction.EGRESS))
                return done
            log.warning("pod %s: no namespace in %s holds its IP, so it cannot be attached inside; attaching on "
                        "its host side %s (copies may miss what an eBPF data path redirects into it)",
                        iface.pod, self.run_dir, iface.ifname)
        try:
            for hook, bit in HOOKS:
                if not direction & bit:
                    continue
                others = tc.others_on_hook(iface.ifname, iface.ifindex, hook)
                if others:
                    log.info("also on %s %s: %s", iface.ifname, hook.value, "; ".join(others))
                att = self.host.attach_source(iface.ifname, iface.ifindex, hook)
                done.attachments.append(att)
                done.owns_qdisc |= att.owns_qdisc
                log.info("pod %s: attached %s", iface.pod, att.describe())
        except BaseException:
            self._drop(done, vanished=False, quiet=True)
            raise
        return done

    def _drop(self, done: _Attached, vanished: bool, quiet: bool = False) -> None:
        if done.inside is not None:
            done.inside.close()
        self.host.detach_sources(done.attachments)
        still_there = self._exists(done.iface)
        if done.owns_qdisc and still_there:
            tc.destroy_clsact(done.iface.ifname, done.iface.ifindex)
        if quiet:
            return
        if vanished and not still_there:
            log.info("pod %s: %s is gone; its attachments went with it", done.iface.pod, done.iface.ifname)
        else:
            log.info("pod %s: detached from %s (no longer selected)", done.iface.pod, done.iface.ifname)

    def _exists(self, iface: HostIface) -> bool:
        try:
            msg = self.ipr.link("get", index=iface.ifindex)[0]
        except NetlinkError:  # ENODEV: the interface is gone
            return False
        return bool(msg.get_attr("IFLA_IFNAME") == iface.ifname)

    def inside_pods(self) -> list[inside.InsidePod]:
        """The pods attached inside (bpftap.agent.inside)."""
        return [a.inside for a in self.attached.values() if a.inside is not None]

    def close(self, detach: bool = True) -> None:
        """Stop the Kubernetes watch and detach from every pod interface (idempotent).

        `detach` False: a handover; the attachments stay for the next agent to adopt.
        """
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if not detach:
            return
        while self.attached:
            _, done = self.attached.popitem()
            self._drop(done, vanished=False, quiet=True)




def agent_prog(hook: tc.Direction) -> str:
    """The program for a hook: abi.PROG_INGRESS or abi.PROG_EGRESS."""
    return abi.PROG_INGRESS if hook is tc.Direction.INGRESS else abi.PROG_EGRESS
