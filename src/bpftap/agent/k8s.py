"""Kubernetes pod sources: watch the pods of this node and map each to its host-side interface.

`PodWatch` lists and then watches pods through the official client
(`pip install bpftap[k8s]`), filtered by `spec.nodeName=$NODE_NAME`, in a
thread. It keeps a `PodIndex` (uid -> pod) current: ADDED and MODIFIED
replace a pod, DELETED drops it, and when the watch expires (HTTP 410 Gone)
or breaks, a fresh list replaces the whole index (a resync: deletions missed
in between disappear). The agent asks `host_ifaces(selector)` once a second.

Pod -> interface. The API does not say which network namespace a pod has
(that is the container runtime's), so the agent goes by the pod IP. First,
the named namespace (/run/netns, where containerd and CRI-O keep pods'
namespaces) that holds the IP: its eth0's veth peer is the host side, and
the pod can be attached inside (any CNI, Cilium's eBPF host routing too).
Else the node's route to a local pod IP names the pod's host-side interface
(`ip route get POD_IP`). That is how Calico (cali*), Cilium without eBPF
host routing (lxc*), the AWS VPC CNI (eni*) and Azure CNI in transparent
mode (azv*) route to pods. Bridge-based CNIs (the bridge plugin as used by
flannel, kubenet, Azure CNI in bridge mode) route to the bridge (cni0); the
port is then found from the pod's neighbour entry (its MAC) and the
bridge's forwarding database. Only a veth whose peer is in another
namespace counts, so a route through cilium_host (Cilium's eBPF host
routing) or the uplink (a pod on another node) yields nothing, and
hostNetwork pods are never selected (their IP is the node's).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpftap.agent.hostiface import HostIface
from bpftap.config import PodSelector
from bpftap.errors import ConfigError

log = logging.getLogger("bpftap.agent.k8s")

WATCH_SECONDS = 300  # the server ends each watch after this; the loop lists and watches again
RETRY_SECONDS = 5.0
Lookup = Callable[[str, IPRoute], "tuple[str, int] | None"]


@dataclass(frozen=True)
class PodInfo:
    """What selection needs of a pod."""

    namespace: str
    name: str
    ip: str | None
    labels: tuple[tuple[str, str], ...]
    host_network: bool = False

    def matches(self, selector: PodSelector) -> bool:
        """In the selector's namespace (any if unset) and carrying all its labels."""
        if selector.namespace is not None and selector.namespace != self.namespace:
            return False
        return set(selector.labels) <= set(self.labels)


def pod_info(pod: Any) -> PodInfo | None:
    """A kubernetes.client.V1Pod as PodInfo; None for a pod that has no interface to mirror.

    That is a pod being deleted, one that finished (Succeeded, Failed), or
    one that has no IP yet (the next MODIFIED brings it).
    """
    meta, spec, status = pod.metadata, pod.spec, pod.status
    phase = status.phase if status else None
    if meta.deletion_timestamp is not None or phase in ("Succeeded", "Failed"):
        return None
    ip = status.pod_ip if status else None
    host_network = bool(spec and spec.host_network)
    return PodInfo(meta.namespace, meta.name, ip, tuple(sorted((meta.labels or {}).items())), host_network)


class PodIndex:
    """The pods of this node, keyed by uid; thread-safe."""

    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}
        self._lock = threading.Lock()

    def apply(self, kind: str, pod: Any) -> None:
        """One watch event: ADDED, MODIFIED, DELETED (BOOKMARK and others change nothing)."""
        uid = pod.metadata.uid
        info = pod_info(pod) if kind in ("ADDED", "MODIFIED") else None
        with self._lock:
            if info is None:
                if self._pods.pop(uid, None) is not None:
                    log.info("pod %s/%s: gone", pod.metadata.namespace, pod.metadata.name)
            else:
                if uid not in self._pods:
                    log.info("pod %s/%s: %s", info.namespace, info.name, info.ip or "no IP yet")
                self._pods[uid] = info

    def replace(self, pods: Iterable[Any]) -> None:
        """A fresh list (resync): the index becomes exactly these pods."""
        fresh = {p.metadata.uid: i for p in pods if (i := pod_info(p)) is not None}
        with self._lock:
            self._pods = fresh

    def select(self, selector: PodSelector) -> list[PodInfo]:
        """Pods with an IP that match `selector`, hostNetwork pods left out, by namespace/name."""
        with self._lock:
            pods = list(self._pods.values())
        found = [p for p in pods if p.ip and not p.host_network and p.matches(selector)]
        return sorted(found, key=lambda p: (p.namespace, p.name))


def _veth_to_other_netns(msg: Any) -> bool:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    return kind in ("veth", "netkit") and msg.get_attr("IFLA_LINK_NETNSID") is not None


def route_iface(ip: str, ipr: IPRoute) -> tuple[str, int] | None:
    """The host-side interface (name, ifindex) of the local pod with address `ip`, or None.

    None if the route leads elsewhere (not a veth to another namespace, nor
    a bridge port that is one), or a bridge has no neighbour entry for `ip`
    yet (the next call may find it). Never raises for a missing route.
    """
    try:
        oif = ipr.route("get", dst=ip)[0].get_attr("RTA_OIF")
        link = ipr.link("get", index=oif)[0]
    except NetlinkError:
        return None
    info = link.get_attr("IFLA_LINKINFO")
    if info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge":
        return _bridge_port(ip, oif, ipr)
    return (link.get_attr("IFLA_IFNAME"), oif) if _veth_to_other_netns(link) else None


def _bridge_port(ip: str, bridge: int, ipr: IPRoute) -> tuple[str, int] | None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    macs = {n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(family=family, ifindex=bridge)
            if n.get_attr("NDA_DST") == ip and n.get_attr("NDA_LLADDR")}
    for entry in ipr.get_neighbours(family=socket.AF_BRIDGE):
        if entry.get_attr("NDA_LLADDR") in macs and entry.get_attr("NDA_MASTER") == bridge:
            port = ipr.link("get", index=entry["ifindex"])[0]
            if _veth_to_other_netns(port):
                return port.get_attr("IFLA_IFNAME"), entry["ifindex"]
    return None



def core_api(where: str, hint: str = "") -> Any:
    """A CoreV1Api with in-cluster credentials, else ~/.kube/config. Raises ConfigError naming `where` if the
    client is not installed (`hint`: what to do instead) or neither has credentials."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError(f"{where} needs the Kubernetes client: pip install 'bpftap[k8s]'{hint}") from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(f"{where}: no Kubernetes credentials (in-cluster or kubeconfig): {exc}") from None
    return client.CoreV1Api()

class PodWatch:
    """Lists and watches this node's pods into a PodIndex, in a thread; maps selected pods to interfaces."""

    def __init__(self, api: Any, node: str, watch_factory: Callable[[], Any], lookup: Lookup = route_iface) -> None:
        self.api, self.node, self.watch_factory, self.lookup = api, node, watch_factory, lookup
        self.index = PodIndex()
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(cls, config_path: str) -> PodWatch:
        """A watch for the node named by $NODE_NAME, with in-cluster credentials (else ~/.kube/config).

        Raises ConfigError naming `config_path` if NODE_NAME is unset, the
        `kubernetes` package is missing, or no credentials are found.
        """
        node = os.environ.get("NODE_NAME", "")
        where = f"{config_path}: sources: a pods selector with namespace/labels"
        if not node:
            raise ConfigError(f"{where} needs NODE_NAME (the DaemonSet sets it from spec.nodeName)")
        api = core_api(where)
        from kubernetes import watch

        return cls(api, node, watch.Watch)

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node}"

    def relist(self) -> str:
        """List this node's pods into the index (a resync); returns the list's resourceVersion."""
        pods = self.api.list_pod_for_all_namespaces(field_selector=self.field_selector)
        self.index.replace(pods.items)
        log.info("listed %d pods on node %s", len(pods.items), self.node)
        return str(pods.metadata.resource_version)

    def run_once(self) -> None:
        """One list and the watch that follows, until the server ends it, it expires (410), or stop().

        Raises kubernetes.client.ApiException for API errors other than 410,
        and urllib3/OS errors when the API server cannot be reached.
        """
        from kubernetes.client.exceptions import ApiException

        version = self.relist()
        self._watch = self.watch_factory()
        try:
            for event in self._watch.stream(
                self.api.list_pod_for_all_namespaces,
                field_selector=self.field_selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
            ):
                if self._stop.is_set():
                    return
                self.index.apply(event["type"], event["object"])
        except ApiException as exc:
            if exc.status != 410:
                raise
            log.info("pod watch expired (410 Gone); listing again")

    def _loop(self) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not self._stop.is_set():
            try:
                self.run_once()
            except (ApiException, HTTPError, OSError) as exc:
                log.warning("pod watch on node %s: %s; retrying in %.0f s", self.node, exc, RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)

    def start(self) -> None:
        """Run the list-and-watch loop in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="bpftap-pod-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end (it ends at the next event or when the watch times out; a daemon thread)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def host_ifaces(self, selector: PodSelector, ipr: IPRoute,
                    by_ip: Callable[[str], HostIface | None] | None = None) -> list[HostIface]:
        """Host-side interfaces of the selected pods that can be found now: by `by_ip` (the pod's network
        namespace, which holds its IP) first, else by route (see the module docstring)."""
        found = []
        for pod in self.index.select(selector):
            assert pod.ip is not None
            name = f"{pod.namespace}/{pod.name}"
            iface = by_ip(pod.ip) if by_ip is not None else None
            if iface is not None:
                found.append(HostIface(iface.ifname, iface.ifindex, name, iface.netns))
            elif (hit := self.lookup(pod.ip, ipr)) is not None:
                found.append(HostIface(hit[0], hit[1], name))
        return found
