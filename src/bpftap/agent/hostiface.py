"""`HostIface`: a pod's host-side interface, the one type pods.py and k8s.py share.

It lives apart from both so that neither imports the other at module level
(pods.py starts a k8s.PodWatch; k8s.py returns HostIface values): the import
graph stays without a circle (tests/unit/test_import_graph.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostIface:
    """The host-side interface of one pod, in the agent's namespace."""

    ifname: str
    ifindex: int
    pod: str  # for logs: the netns name, or namespace/name in Kubernetes
    netns: str | None = None  # the pod's network namespace by name (/run/netns), if known: for attach: inside
