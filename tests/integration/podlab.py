"""A node with pods on a bridge, made of network namespaces, for the pod-selection tests.

    <p>-web-1 eth0 --- vp-web-1 \\
    <p>-db-1  eth0 --- vp-db-1  -- br0 (198.18.10.254)  <p>-node  tocol --- eth0 <p>-col (198.18.11.1, vx0: VXLAN 42)
    ...                          /

Each pod is a namespace whose eth0 (198.18.10.N, 2001:db8:10::N) is a veth
to `vp-<pod>` in the node namespace, enslaved to the node's bridge. The
collector namespace receives VXLAN 42 on the kernel device vx0. Addresses
are from 198.18.0.0/15 and 2001:db8::/32; nothing is created in the root
namespace, and `close()` deletes every namespace (which deletes its veths).
`add_outside()` adds a host behind the node's uplink, for the tests where
an eBPF CNI's redirects carry pod traffic (test_pods_inside.py).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Sequence
from typing import Any

BRIDGE4, BRIDGE6 = "198.18.10.254", "2001:db8:10::fe"
BRIDGE_MAC = "02:b7:00:00:0a:fe"
COL4, NODE_COL4 = "198.18.11.1", "198.18.11.254"
VNI = 42
# the outside host behind the node's uplink (add_outside)
EXT4, EXT6, UPLINK4, UPLINK6 = "198.18.12.1", "2001:db8:12::1", "198.18.12.254", "2001:db8:12::fe"
EXT_MAC, UPLINK_MAC = "02:b7:00:00:0c:01", "02:b7:00:00:0c:fe"
UPLINK = "up0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class PodLab:
    """The namespaces `<prefix>-node`, `<prefix>-col` and one per pod; a context manager."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"bpod{secrets.token_hex(2)}"
        self.node, self.col = f"{self.prefix}-node", f"{self.prefix}-col"
        self.ext = f"{self.prefix}-ext"
        self.pods: dict[str, int] = {}  # pod name -> host number (its address's last byte)
        self.created: list[str] = []

    def __enter__(self) -> PodLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._netns(self.node)
        self._netns(self.col)
        n, c = self.node, self.col
        # a fixed MAC: otherwise the bridge takes its lowest port's, and pods' ARP entries go stale
        _ip("-n", n, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge")
        _ip("-n", n, "addr", "add", f"{BRIDGE4}/24", "dev", "br0")
        _ip("-n", n, "addr", "add", f"{BRIDGE6}/64", "dev", "br0", "nodad")
        _ip("-n", n, "link", "set", "br0", "up")
        _ip("-n", n, "link", "add", "tocol", "type", "veth", "peer", "name", "eth0", "netns", c)
        _ip("-n", n, "addr", "add", f"{NODE_COL4}/24", "dev", "tocol")
        _ip("-n", n, "link", "set", "tocol", "up")
        _ip("-n", c, "addr", "add", f"{COL4}/24", "dev", "eth0")
        _ip("-n", c, "link", "set", "eth0", "up")
        _ip("-n", c, "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "dstport", "4789",
            "local", COL4, "nolearning")
        _ip("-n", c, "link", "set", "vx0", "up")

    def add_outside(self) -> None:
        """The namespace `<prefix>-ext` (198.18.12.1, 2001:db8:12::1) behind the node's uplink `up0`.

        It routes the pods' subnets to the node, and every pod (present and
        later) gets default routes to the bridge; the node does not forward
        (a new namespace's default), so pod traffic to and from it flows only
        where a program redirects it (tests/bpf_progs/cni_redirect.bpf.c).
        """
        n, e = self.node, self.ext
        self._netns(e)
        _ip("-n", n, "link", "add", UPLINK, "address", UPLINK_MAC, "type", "veth", "peer", "name", "eth0",
            "address", EXT_MAC, "netns", e)
        _ip("-n", n, "addr", "add", f"{UPLINK4}/24", "dev", UPLINK)
        _ip("-n", n, "addr", "add", f"{UPLINK6}/64", "dev", UPLINK, "nodad")
        _ip("-n", n, "link", "set", UPLINK, "up")
        _ip("-n", e, "addr", "add", f"{EXT4}/24", "dev", "eth0")
        _ip("-n", e, "addr", "add", f"{EXT6}/64", "dev", "eth0", "nodad")
        _ip("-n", e, "link", "set", "eth0", "up")
        _ip("-n", e, "route", "add", "198.18.10.0/24", "via", UPLINK4)
        _ip("-n", e, "route", "add", "2001:db8:10::/64", "via", UPLINK6)
        for pod in self.pods:
            self._pod_routes(pod)

    def _pod_routes(self, pod: str) -> None:
        _ip("-n", self.ns(pod), "route", "add", "default", "via", BRIDGE4)
        _ip("-n", self.ns(pod), "route", "add", "default", "via", BRIDGE6)

    def mac(self, ns: str, ifname: str = "eth0") -> str:
        return str(json.loads(_ip("-n", ns, "-j", "link", "show", ifname).stdout)[0]["address"])

    def ns(self, pod: str) -> str:
        """The namespace name of `pod` (e.g. `web-1` -> `<prefix>-web-1`)."""
        return f"{self.prefix}-{pod}"

    def ip4(self, pod: str) -> str:
        return f"198.18.10.{self.pods[pod]}"

    def add_pod(self, pod: str) -> None:
        """A namespace `<prefix>-<pod>` wired to the bridge; its host veth is `vp-<pod>`."""
        number = max(self.pods.values(), default=0) + 1
        ns, host = self.ns(pod), f"vp-{pod}"
        self._netns(ns)
        _ip("-n", self.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.node, "link", "set", host, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"198.18.10.{number}/24", "dev", "eth0")
        _ip("-n", ns, "addr", "add", f"2001:db8:10::{number:x}/64", "dev", "eth0", "nodad")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.pods[pod] = number
        if self.ext in self.created:
            self._pod_routes(pod)

    def add_stale(self, pod: str) -> None:
        """A namespace `<prefix>-<pod>-stale` holding `pod`'s addresses on an eth0 wired to nothing here (a veth
        whose peer is in the same namespace): a pod sandbox a runtime failed to delete, whose IP went to a new pod.
        Its name sorts after the pod's."""
        ns, number = f"{self.ns(pod)}-stale", self.pods[pod]
        self._netns(ns)
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "lo1")
        _ip("-n", ns, "addr", "add", f"198.18.10.{number}/24", "dev", "eth0")
        _ip("-n", ns, "addr", "add", f"2001:db8:10::{number:x}/64", "dev", "eth0", "nodad")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def del_pod(self, pod: str) -> None:
        """Delete the pod's namespace (its veth, and so its host side, go with it)."""
        ns = self.ns(pod)
        _ip("netns", "del", ns)
        self.created.remove(ns)
        self.pods.pop(pod)

    def run(self, ns: str, cmd: Sequence[str], check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check, **kw)

    def popen(self, ns: str, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)

    def close(self) -> None:
        """Delete every namespace made here (idempotent); processes are the caller's to end first."""
        while self.created:
            _ip("netns", "del", self.created.pop(), check=False)


def wait_for(what: str, check: Any, timeout: float = 60.0) -> None:
    """Poll `check` until true; generous, as an agent's start (loading and verifying the object) takes seconds on
    a loaded machine and more under emulation (make kernels)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
