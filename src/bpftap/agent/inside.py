"""Pod sources attached inside the pod (`attach: inside`): stage 1 on the pod's own eth0, copies out by the node.

Why: an eBPF CNI (Cilium, Calico's eBPF data path) hands traffic for a pod
straight to the pod's eth0 with bpf_redirect_peer, so the host-side veth's
hooks never see the pod's ingress. Only the pod's eth0 sees every packet.

How (bpf/inside.bpf.h has the kernel side):

    pod netns:  eth0 [mirror_ingress, mirror_egress] --clone--> bpftapi [egress: mirror_xfer_out]
                                                                   | veth, crossing namespaces
    node netns:  bpi<N> [ingress: mirror_encap_inside] --redirect--> bpftap0 egress: the node's own copy path

- `bpftapi`, the pod end of a veth pair of bpftap's own, is created in the
  pod's namespace with the ifindex of bpftap0 in the node's, so stage 1's
  clone (to the config's encap_ifindex) lands on it unchanged. The pair
  keeps the kernel's offloads: a super-packet's clone crosses it whole.
- Crossing namespaces clears the clone's mark (skb_scrub_packet with xnet);
  mirror_xfer_out puts it in skb->hash, which the scrub keeps, and drops
  anything else.
- `bpi<N>` (N: the pod's host-side veth's ifindex), the node end, runs
  mirror_encap_inside: the mark back from the hash, with the source id of
  bpi<N>, and on to bpftap0's egress, where the clone takes the way a clone
  of a host-side source takes: a GSO session's super-packet encapsulated
  whole by mirror_gso, the rest segmented for stage 2 on bpftap1; the copy
  leaves by the session's device, the node's uplink. Nothing is ever sent
  into the pod: no extra frame on its eth0 (the pod does see an extra
  interface, bpftapi, whose only traffic is the copies leaving; both ends
  have IPv6, ARP and multicast off).

`auto` picks inside for a pod when a BPF program other than bpftap's is on
its host-side veth's tc ingress (tcx or clsact): that is where Cilium
(cil_from_container) and Calico's eBPF data path put theirs, and a data path
with programs there is one that delivers pod ingress with bpf_redirect_peer.
Otherwise host: one program fewer in the pod and no per-pod pair.

Pods come and go: deleting a pod's namespace deletes eth0 and bpftapi, and
with bpftapi its peer bpi<N>; close() detaches and unpins what is left.
Every link is pinned: the node end's with the agent's links, the pod's
(tcx) under pods/<N> of the agent's pin directory, named by their ifindex
in the pod. So the copies go on while no agent runs, and a restarted agent
adopts a pod whose pair is still there (bpi<N> whose peer has bpftap0's
ifindex): its pinned links and clsact filters are kept as they are (or given
the new programs, with --upgrade), and no packet goes uncopied. prune()
removes the pairs and pins of pods no longer attached inside. A pod is
entered by its named namespace (/run/netns): a `netns:` selector's, or for
a Kubernetes pod the one that holds its IP (bpftap.agent.pods);
`interface:` rule matches see the pod's eth0 ifindex in its own namespace,
which means nothing on the node, so they do not apply there.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpftap import abi
from bpftap.bpf import pins, tc
from bpftap.bpf.objects import Program
from bpftap.errors import BpftapError
from bpftap.netlink import INTERNAL_MTU

if TYPE_CHECKING:
    from bpftap.agent.daemon import Agent

log = logging.getLogger("bpftap.agent.inside")

POD_END = "bpftapi"
NODE_PREFIX = "bpi"
PINS = "pods"  # under the agent's pin directory: pods/<N>, the pod links of bpi<N>
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class InsideError(BpftapError):
    """A step of making a pod's pair failed: the command and what it said."""


def node_end(host_ifindex: int) -> str:
    """The node end's name for the pod whose host-side veth has `host_ifindex`."""
    return f"{NODE_PREFIX}{host_ifindex}"


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace at `path` (the agent's other threads stay).

    Raises InsideError if the namespace is gone (or going: a file of
    /run/netns whose mount was just removed is no namespace any more).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise InsideError(f"{path}: {exc.strerror} (the pod went away)") from None
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise InsideError(f"setns {path}: {os.strerror(ctypes.get_errno())} (the pod went away)")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # this thread would go on in the pod: stop here
                raise SystemExit(f"bpftap: cannot return from {path} to the agent's namespace")
    finally:
        os.close(own)


def _run(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    if res.returncode != 0:
        raise InsideError(f"{' '.join(cmd)}: {res.stderr.strip() or 'failed'}")


def wants_inside(choice: str, host_ifname: str, host_ifindex: int) -> bool:
    """Whether a pod with `attach: choice` gets attached inside (auto: a foreign program on its veth's ingress)."""
    if choice != "auto":
        return choice == "inside"
    others = tc.others_on_hook(host_ifname, host_ifindex, tc.Direction.INGRESS)
    if others:
        log.info("%s: %s on its ingress: an eBPF data path may deliver the pod's ingress past it; "
                 "attaching inside the pod", host_ifname, "; ".join(others))
    return bool(others)


@dataclass
class InsidePod:
    """What one pod's inside attachment consists of; close() undoes it (idempotent)."""

    netns: str  # the name in /run/netns
    node_ifname: str
    node_ifindex: int
    pins: Path  # where the pod's tcx links are pinned
    pod: list[tc.Attachment] = field(default_factory=list)  # eth0's and bpftapi's, in the pod's namespace
    node: tc.Adopted | None = None  # mirror_encap_inside on the node end

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def close(self) -> None:
        if self.node is not None:
            self.node.close()  # unpins its link
            self.node = None
        clsact = [a for a in self.pod if a.mode is tc.Mode.TC]
        for att in self.pod:
            if att.mode is tc.Mode.TCX:
                att.close()  # a link fd: closing detaches, whatever namespace the device is in
        self.pod = []
        if os.path.exists(self.path):
            with suppress(OSError, InsideError), in_netns(self.path):
                for att in clsact:
                    att.close()
                    if att.owns_qdisc:
                        tc.destroy_clsact(att.ifname, att.ifindex)
        with suppress(InsideError):
            _run("ip", "link", "del", self.node_ifname)  # and with it bpftapi (gone already with the pod)
        pins.remove(self.pins)


def attach(agent: Agent, netns: str, host_ifindex: int, ingress: bool, egress: bool) -> InsidePod:
    """Attach stage 1 in the pod and stage 2 on the node end, adopting an earlier agent's. Raises BpftapError."""
    done = InsidePod(netns, node_end(host_ifindex), 0, agent.pin_dir / PINS / str(host_ifindex))
    try:
        earlier = _earlier_pair(done.node_ifname, agent.encap_ifindex)
        if earlier is None:
            pins.remove(done.pins)
            _make_pair(done, agent.encap_ifindex)
        else:
            done.node_ifindex = earlier
        with in_netns(done.path):
            try:
                eth0 = socket.if_nametoindex("eth0")
            except OSError:
                raise InsideError(f"{done.netns}: no eth0 (the pod went away)") from None
            wanted = [(POD_END, agent.encap_ifindex, tc.Direction.EGRESS, abi.PROG_XFER_OUT)]
            wanted += [("eth0", eth0, tc.Direction.INGRESS, abi.PROG_INGRESS)] if ingress else []
            wanted += [("eth0", eth0, tc.Direction.EGRESS, abi.PROG_EGRESS)] if egress else []
            found = tc.adopt(done.pins, {eth0: "eth0", agent.encap_ifindex: POD_END}) if earlier else []
            for ifname, ifindex, hook, name in wanted:
                prog = agent.obj.program(name)
                att = _take(found, ifindex, hook, prog, agent.upgrade, netns)
                if att is None:
                    att = tc.attach(prog, ifname, ifindex, hook, agent.mode, True, agent.priority)
                    tc.pin_link(att, done.pins)
                    log.info("pod %s: attached %s (in the pod)", netns, att.describe())
                done.pod.append(att)
            for left in found:  # the earlier agent's, on a hook this config leaves out
                left.close()
        done.node = agent.place(agent.obj.program(abi.PROG_ENCAP_INSIDE), done.node_ifname, done.node_ifindex,
                                tc.Direction.INGRESS)
    except BaseException:
        done.close()
        raise
    return done


def _earlier_pair(node_ifname: str, encap_ifindex: int) -> int | None:
    """The ifindex of an earlier agent's node end `node_ifname` if its pod end has bpftap0's ifindex, else None."""
    try:
        with IPRoute() as ipr:
            msg = ipr.link("get", ifname=node_ifname)[0]
    except NetlinkError:  # ENODEV: there is none
        return None
    return int(msg["index"]) if msg.get_attr("IFLA_LINK") == encap_ifindex else None


def _take(found: list[tc.Adopted], ifindex: int, hook: tc.Direction, prog: Program,
          upgrade: bool, netns: str) -> tc.Attachment | None:
    """The earlier agent's attachment of `prog` on that hook, out of `found`: kept, or given `prog` with upgrade."""
    for old in found:
        if isinstance(old, tc.Attachment) and (old.ifindex, old.direction) == (ifindex, hook) \
                and old.program == prog.name[: len(old.program)]:
            found.remove(old)
            if upgrade:
                old.replace(prog)
            log.info("pod %s: %s %s (in the pod)", netns, "upgraded" if upgrade else "adopted", old.describe())
            return old
    return None


def prune(kept: Iterable[InsidePod], pin_dir: Path | None = None) -> list[str]:
    """Remove the pairs (and pod pins under `pin_dir`) of pods not in `kept`: an earlier agent's, for pods gone
    or no longer attached inside. Returns what was removed, a line each."""
    keep = {p.node_ifname for p in kept}
    with IPRoute() as ipr:  # node ends: veths bpi<digits> whose peer is in another namespace
        names = [str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links() if m.get_attr("IFLA_LINK_NETNSID")
                 is not None and m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth"]
    done = []
    for name in names:
        if name.startswith(NODE_PREFIX) and name[len(NODE_PREFIX):].isdigit() and name not in keep:
            with suppress(InsideError):
                _run("ip", "link", "del", name)
                done.append(f"removed {name}, the node end of a pod's pair (and with it {POD_END} in the pod)")
    for path in sorted((pin_dir / PINS).glob("*")) if pin_dir is not None else []:
        if not (path.name.isdigit() and node_end(int(path.name)) in keep):
            pins.remove(path)
            done.append(f"removed the pins at {path}")
    return done


def _make_pair(done: InsidePod, encap_ifindex: int) -> None:
    """bpftapi (ifindex `encap_ifindex`) in the pod, its peer bpi<N> here (no GRO); both up, quiet."""
    with suppress(InsideError):
        _run("ip", "link", "del", done.node_ifname)  # an earlier agent's
    mtu = str(INTERNAL_MTU)
    # made in the pod (the kernel takes a given ifindex for the first end only), then the node end comes here
    try:
        _run("ip", "-n", done.netns, "link", "add", POD_END, "index", str(encap_ifindex), "mtu", mtu,
             "type", "veth", "peer", "name", done.node_ifname, "mtu", mtu)
    except InsideError as exc:
        raise InsideError(f"{POD_END} with ifindex {encap_ifindex} (bpftap0's) in {done.netns}: {exc}") from None
    _run("ip", "-n", done.netns, "link", "set", done.node_ifname, "netns", str(os.getpid()))
    done.node_ifindex = socket.if_nametoindex(done.node_ifname)
    inside = ["ip", "netns", "exec", done.netns]
    for prefix, name in (([], done.node_ifname), (inside, POD_END)):
        with suppress(InsideError):  # IPv6 off in this kernel or namespace: nothing to turn off
            _run(*prefix, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1")
        _run(*prefix, "ip", "link", "set", name, "arp", "off", "multicast", "off", "up")
    _run("ethtool", "-K", done.node_ifname, "gro", "off")


