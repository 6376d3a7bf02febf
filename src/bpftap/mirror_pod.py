"""``bpftap mirror pod/NAMESPACE/NAME`` and ``--netns NAME``: one pod's traffic, found on this node.

A target becomes a config source, as an interface does (bpftap.mirror):

- ``--netns NAME``: the pod whose network namespace is /run/netns/NAME
  (pods without a cluster): a `pods: {netns: NAME}` source with the
  `--attach` asked for (auto by default), so the agent's pod follower does
  the attaching, inside the pod or on its host-side veth, and its detaching.
- ``pod/NAMESPACE/NAME``: read from the Kubernetes API (in-cluster
  credentials, else ~/.kube/config); it must run on this node ($NODE_NAME,
  else the host name) and have an IP. The named namespace in /run/netns
  that holds that IP (containerd and CRI-O keep pods' namespaces there;
  of several, the one whose eth0's peer is here) is the pod's, and it is
  mirrored as with --netns; if none does, on the interface the node's
  route to the IP names (bpftap.agent.k8s.route_iface; `attach: host`
  only).

Mistakes are ConfigErrors that name the target, before anything is attached.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from bpftap.agent.k8s import core_api
from bpftap.errors import ConfigError

ORIGIN = "bpftap mirror"
PREFIX = "pod/"


def is_pod(target: str) -> bool:
    return target.startswith(PREFIX)


def netns_source(name: str, direction: str, attach: str) -> dict[str, Any]:
    """The source for the pod in /run/netns/`name`; ConfigError (--netns) if there is no such pod here."""
    from pyroute2 import IPRoute

    from bpftap.agent.pods import NETNS_DIR, is_pod_here

    if "/" in name or any(c in name for c in "*?["):
        raise ConfigError(f"{ORIGIN}: --netns: {name!r}: give one namespace's name, as 'ip netns list' shows it")
    if not os.path.exists(os.path.join(NETNS_DIR, name)):
        raise ConfigError(f"{ORIGIN}: --netns: {name!r}: no such network namespace in {NETNS_DIR}")
    with IPRoute() as ipr:
        here = is_pod_here(name, ipr)
    if not here:
        raise ConfigError(f"{ORIGIN}: --netns: {name!r} has no eth0 whose veth peer is in this network namespace")
    return {"pods": {"netns": name}, "direction": direction, "attach": attach}


def k8s_api() -> Any:
    """A CoreV1Api with in-cluster credentials, else ~/.kube/config; ConfigError if neither works."""
    return core_api(f"{ORIGIN}: pod/...", " (or use --netns NAME)")


def pod_source(target: str, direction: str, attach: str, api: Any = None, node: str | None = None) -> dict[str, Any]:
    """The source for `pod/NAMESPACE/NAME` on this node; ConfigError naming the target if it cannot be mirrored here."""
    from pyroute2 import IPRoute

    from bpftap.agent.k8s import route_iface
    from bpftap.agent.pods import addresses, is_pod_here, netns_names

    parts = target[len(PREFIX):].split("/")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{ORIGIN}: {target}: write pod/NAMESPACE/NAME")
    namespace, name = parts
    api = api if api is not None else k8s_api()
    node = node or os.environ.get("NODE_NAME") or socket.gethostname()
    try:
        pod = api.read_namespaced_pod(name, namespace)
    except Exception as exc:  # noqa: BLE001 (kubernetes.client.ApiException: 404 and the rest; urllib3's errors)
        status = getattr(exc, "status", None)
        what = "no such pod" if status == 404 else f"cannot read it: {getattr(exc, 'reason', None) or exc}"
        raise ConfigError(f"{ORIGIN}: {target}: {what}") from None
    where = pod.spec.node_name if pod.spec else None
    if where != node:
        raise ConfigError(f"{ORIGIN}: {target}: runs on node {where or '(none yet)'}, not on this one ({node}); "
                          "run bpftap mirror there")
    if pod.spec.host_network:
        raise ConfigError(f"{ORIGIN}: {target}: uses the node's network (hostNetwork): mirror the node's "
                          "interfaces instead")
    ip = pod.status.pod_ip if pod.status else None
    if not ip:
        raise ConfigError(f"{ORIGIN}: {target}: has no IP yet")
    holders = addresses(netns_names()).get(ipaddress.ip_address(ip).compressed, [])
    with IPRoute() as ipr:
        # a stale namespace may keep a reused IP too: the pod's is the one whose eth0's peer is here
        netns = next((ns for ns in holders if is_pod_here(ns, ipr)), holders[0] if holders else None)
        if netns is not None:
            return {"pods": {"netns": netns}, "direction": direction, "attach": attach}
        found = route_iface(ip, ipr)
    if found is None:
        raise ConfigError(f"{ORIGIN}: {target}: no namespace in /run/netns holds its IP {ip}, and the route to it "
                          "names no veth of a pod here (is it on this node? else use --netns NAME)")
    if attach == "inside":
        raise ConfigError(f"{ORIGIN}: {target}: no namespace in /run/netns holds its IP {ip}, so it cannot be "
                          f"attached inside; --attach host mirrors it on its veth {found[0]}")
    return {"interface": found[0], "direction": direction}
