"""The daemon's view of routes, neighbours and links, through rtnetlink (pyroute2).

Everything here works in the network namespace of the calling process (the
daemon runs under ``ip netns exec`` in the lab, or in a pod's namespace).

`resolve` turns a collector address into the `NextHop` a BPF program needs
to send a copy itself: egress ifindex, source IP, both MACs and the MTU.
When the neighbour entry is missing it asks the kernel to resolve it with
an ``RTM_NEWNEIGH`` carrying ``NTF_USE``: the kernel's neigh_add() then calls
neigh_event_send(), which sends ARP requests / neighbour solicitations, and
no packet of ours goes on the wire. The caller retries (`resolve_retry`).
Copies sent by BPF never confirm the entry, so it goes STALE: `resolve`
still returns a STALE entry but kicks a re-probe; re-resolve periodically.

`ensure_internal_pair` makes bpftap's own veth pair (copies are cloned to
``bpftap0`` and come out of ``bpftap1``) with the offloads off on the
transmit side, so the kernel finishes checksums and segments GSO packets.

Debugging entry: ``python -m bpftap.netlink resolve ADDR`` prints JSON
(see `main`).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_MULTICAST, IFF_NOARP, IFF_UP

from bpftap.errors import BpfError, BpftapError

IPAddress = IPv4Address | IPv6Address

INTERNAL_A = "bpftap0"
"""Internal veth end that copies are cloned to (offloads off)."""
INTERNAL_B = "bpftap1"
"""Its peer."""
INTERNAL_MTU = 65535
# queues (and NAPI rings) per end: copies of different flows, and the fragments of different copies, spread
# over them; measured under load on 2 vCPUs (1 Gbit/s TCP, all mirrored, every copy two fragments): 4 queues
# dropped 298-786 fragment clones and 0-161 stage-1 clones per 10 s, 1 queue 1,762-2,130 and 1,040-2,043
INTERNAL_QUEUES = 4
"""MTU of both internal ends: a veth drops frames longer than its peer's MTU, and
originals may be jumbo frames (GSO packets are segmented on the way out of A)."""

ARPHRD_ETHER = 1
RTN_LOCAL, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 2, 6, 7, 8
NUD_USABLE = (ndmsg.NUD_REACHABLE | ndmsg.NUD_STALE | ndmsg.NUD_DELAY | ndmsg.NUD_PROBE
              | ndmsg.NUD_PERMANENT | ndmsg.NUD_NOARP)
"""Neighbour states whose link-layer address the kernel itself would use."""

# `ethtool -K` settings for the internal device and how `ethtool -k` names them
OFFLOADS_OFF = {"tx": "tx-checksumming", "tso": "tcp-segmentation-offload",
                "gso": "generic-segmentation-offload", "gro": "generic-receive-offload",
                "sg": "scatter-gather", "txvlan": "tx-vlan-offload",
                "tx-vlan-stag-hw-insert": "tx-vlan-stag-hw-insert"}
_VLAN_OFFLOADS = ("txvlan", "tx-vlan-stag-hw-insert")


class ResolveError(BpftapError):
    """The route, device or neighbour toward a remote is not usable (yet).

    `retry` is True when the neighbour is being resolved and a later call
    may succeed.
    """

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class LinkError(BpfError):
    """Creating or configuring a link failed: ``create veth on bpftap0: ...``."""


@dataclass(frozen=True)
class NextHop:
    """Where copies toward one remote leave this host, as of the last lookup."""

    ifindex: int
    ifname: str
    src: IPAddress
    src_mac: bytes
    """6 bytes: the egress device's MAC."""
    dst_mac: bytes
    """6 bytes: the gateway's MAC, or the remote's when it is on-link."""
    mtu: int
    """The route's MTU if it sets one, else the device's."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, MACs as ``aa:bb:...`` and the address as text."""
        d = asdict(self)
        d.update(src=str(self.src), src_mac=_mac_str(self.src_mac), dst_mac=_mac_str(self.dst_mac))
        return d


def _mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _mac_bytes(text: str | None) -> bytes | None:
    if not text:
        return None
    mac = bytes.fromhex(text.replace(":", ""))
    return mac if len(mac) == 6 and any(mac) else None


@contextmanager
def _ipr(ipr: IPRoute | None) -> Iterator[IPRoute]:
    """`ipr` itself, or a fresh IPRoute closed at the end of the block."""
    if ipr is not None:
        yield ipr
        return
    with IPRoute() as own:
        yield own


def _route_get(remote: IPAddress, ipr: IPRoute) -> Any:
    try:
        routes = list(ipr.route("get", dst=str(remote)))
    except NetlinkError as e:
        if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL):
            raise ResolveError(f"no route to {remote}") from e
        raise ResolveError(f"route lookup for {remote}: {e}") from e
    if not routes:
        raise ResolveError(f"no route to {remote}")
    route = routes[0]
    if route["type"] in (RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT):
        raise ResolveError(f"no route to {remote} (the route is unreachable/blackhole/prohibit)")
    if route["type"] == RTN_LOCAL:
        raise ResolveError(f"{remote} is an address of this host; copies must leave it "
                           f"through an Ethernet device")
    return route


def _first_addr(ifindex: int, ifname: str, family: int, ipr: IPRoute) -> IPAddress:
    """The device's first global address of `family` (link-local as a last choice)."""
    addrs = [ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=family, index=ifindex)]
    addrs.sort(key=lambda a: a.is_link_local)
    if not addrs:
        fam = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise ResolveError(f"{ifname} has no {fam} address to send from")
    return addrs[0]


def request_neighbour(addr: IPAddress, ifindex: int, ipr: IPRoute) -> None:
    """Make the kernel (re)resolve `addr` on `ifindex` by ARP / neighbour solicitation.

    Sends ``RTM_NEWNEIGH`` with ``NTF_USE`` and state NONE (so no permanent
    entry is made): the kernel creates the entry if needed and starts probing.
    Raises ResolveError if the kernel refuses (e.g. a device without ARP).
    """
    try:
        ipr.neigh("replace", dst=str(addr), ifindex=ifindex, flags=ndmsg.NTF_USE,
                  state=ndmsg.NUD_NONE)
    except NetlinkError as e:
        raise ResolveError(f"cannot start resolving neighbour {addr}: {e}") from e


def resolve(remote: IPAddress, ipr: IPRoute | None = None) -> NextHop:
    """The next hop toward `remote` per the current routes and neighbour table.

    Raises ResolveError saying what is missing: ``no route to X``; ``eth2 has
    no MAC address (not Ethernet ...)``; ``eth2 has no IPv6 address``; or
    ``neighbour X on eth2 not resolved yet`` (retry=True) after asking the
    kernel to resolve it. A STALE entry is returned as is and re-confirmed in
    the background, because copies sent by BPF never refresh it.
    """
    with _ipr(ipr) as ipr:
        route = _route_get(remote, ipr)
        oif = route.get_attr("RTA_OIF")
        if not oif:
            raise ResolveError(f"no route to {remote} (the route has no output device)")
        link = ipr.link("get", index=oif)[0]
        ifname = link.get_attr("IFLA_IFNAME")
        src_mac = _mac_bytes(link.get_attr("IFLA_ADDRESS"))
        if link["ifi_type"] != ARPHRD_ETHER or src_mac is None:
            raise ResolveError(f"{ifname} has no MAC address (not Ethernet: link type "
                               f"{link['ifi_type']}); copies need an Ethernet egress device")
        metrics = route.get_attr("RTA_METRICS")
        mtu = (metrics.get_attr("RTAX_MTU") if metrics else None) or link.get_attr("IFLA_MTU")
        family = socket.AF_INET6 if remote.version == 6 else socket.AF_INET
        pref = route.get_attr("RTA_PREFSRC")
        src = ip_address(pref) if pref else _first_addr(oif, ifname, family, ipr)
        via = route.get_attr("RTA_VIA")
        gw = route.get_attr("RTA_GATEWAY") or (via["addr"] if via else None)
        hop = ip_address(gw) if gw else remote
        neigh = None
        try:
            neigh = ipr.neigh("get", dst=str(hop), ifindex=oif)[0]
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise ResolveError(f"neighbour lookup for {hop} on {ifname}: {e}") from e
        dst_mac = _mac_bytes(neigh.get_attr("NDA_LLADDR")) if neigh is not None else None
        state = neigh["state"] if neigh is not None else ndmsg.NUD_NONE
        if not state & NUD_USABLE or dst_mac is None:
            request_neighbour(hop, oif, ipr)
            raise ResolveError(f"neighbour {hop} on {ifname} not resolved yet", retry=True)
        if state & ndmsg.NUD_STALE:
            request_neighbour(hop, oif, ipr)
        return NextHop(ifindex=oif, ifname=ifname, src=src, src_mac=src_mac, dst_mac=dst_mac,
                       mtu=int(mtu))


# what a next hop is made of, as rtnetlink multicast groups (linux/rtnetlink.h): RTMGRP_LINK, _NEIGH,
# _IPV4_IFADDR, _IPV4_ROUTE, _IPV6_IFADDR, _IPV6_ROUTE
NEXTHOP_GROUPS = 0x1 | 0x4 | 0x10 | 0x40 | 0x100 | 0x400


class RouteWatch:
    """Whether this namespace's links, addresses, routes or neighbours changed since the last look.

    A non-blocking rtnetlink socket subscribed to their notifications:
    draining it costs microseconds where `resolve` costs milliseconds (about
    20 ms a collector each second through pyroute2 on a 2-vCPU VM, most of
    an idle agent's CPU). `due` says when to resolve again: after a change
    (a neighbour going STALE is one), while a session waits on something,
    and every `every` seconds in case notifications were lost.
    """

    def __init__(self, every: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, NEXTHOP_GROUPS))
        self.every, self.next = every, 0.0

    def changed(self) -> bool:
        """Read every pending notification; whether there was one (or some were lost: the socket overflowed)."""
        seen = False
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
            seen = True

    def due(self, waiting: bool = False) -> bool:
        """Whether to resolve now: a change since the last call, `waiting`, or `every` seconds since the last time."""
        now = time.monotonic()
        if self.changed() or waiting or now >= self.next:
            self.next = now + self.every
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def resolve_retry(remote: IPAddress, ipr: IPRoute | None = None, timeout: float = 3.0,
                  interval: float = 0.05) -> NextHop:
    """`resolve`, retried while the neighbour is being resolved, for up to `timeout` s.

    Raises the last ResolveError when time runs out, and at once when
    retrying cannot help (no route, not Ethernet).
    """
    deadline = time.monotonic() + timeout
    with _ipr(ipr) as ipr:
        while True:
            try:
                return resolve(remote, ipr)
            except ResolveError as e:
                if not e.retry or time.monotonic() + interval > deadline:
                    raise
            time.sleep(interval)


def links(ipr: IPRoute | None = None) -> dict[str, int]:
    """Every link of the current namespace: name -> ifindex."""
    with _ipr(ipr) as ipr:
        return {m.get_attr("IFLA_IFNAME"): m["index"] for m in ipr.get_links()}


def link_index(name: str, ipr: IPRoute | None = None) -> int | None:
    """The ifindex of link `name`, or None if there is none."""
    with _ipr(ipr) as ipr:
        found = ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None


def match_interfaces(patterns: Sequence[str], ipr: IPRoute | None = None,
                     exclude: Sequence[str] = ("lo", INTERNAL_A, INTERNAL_B)) -> dict[str, int]:
    """Links whose names match any fnmatch glob in `patterns`, minus `exclude`."""
    return {name: idx for name, idx in links(ipr).items()
            if name not in exclude and any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def _link_kind(index: int, ipr: IPRoute) -> str | None:
    info = ipr.link("get", index=index)[0].get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def tx_dropped(names: Sequence[str]) -> dict[str, int]:
    """Each device's transmit drops (IFLA_STATS64 tx_dropped), 0 for a device that is not there.

    Opens its own netlink socket: callers are status and metrics threads.
    """
    out = {}
    with IPRoute() as ipr:
        for name in names:
            links = ipr.get_links(ifname=name) if link_index(name, ipr) is not None else []
            stats = links[0].get_attr("IFLA_STATS64") if links else None
            out[name] = int(stats["tx_dropped"]) if stats else 0
    return out


def delete_internal_pair(name_a: str = INTERNAL_A, ipr: IPRoute | None = None) -> None:
    """Delete the internal veth pair `name_a` (its peer goes with it); no-op if absent.

    Raises LinkError if `name_a` is not a veth (never deletes a foreign
    device) or the kernel refuses.
    """
    with _ipr(ipr) as ipr:
        index = link_index(name_a, ipr)
        if index is None:
            return
        if _link_kind(index, ipr) != "veth":
            raise LinkError("delete internal pair", name_a, errno.EEXIST,
                            hint=f"{name_a} exists and is not a veth; not touching it")
        try:
            ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise LinkError("delete internal pair", name_a, e.code) from e


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _ethtool(*args: str) -> str:
    try:
        res = subprocess.run(["ethtool", *args], capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError as e:
        raise LinkError("run ethtool", errno=errno.ENOENT, hint="install ethtool") from e
    if res.returncode:
        raise LinkError(f"ethtool {' '.join(args)}", errno=errno.EIO,
                        hint=(res.stderr or res.stdout).strip())
    return res.stdout


def offloads(name: str) -> dict[str, str]:
    """``ethtool -k name`` as feature -> "on"/"off" (suffixes like [fixed] dropped)."""
    out = {}
    for line in _ethtool("-k", name).splitlines()[1:]:
        key, _, val = line.strip().partition(":")
        if val:
            out[key] = val.split()[0]
    return out


def ensure_internal_pair(name_a: str = INTERNAL_A, name_b: str = INTERNAL_B,
                         ipr: IPRoute | None = None, mtu: int = INTERNAL_MTU) -> tuple[int, int]:
    """Create bpftap's internal veth pair afresh and return (ifindex_a, ifindex_b).

    A pair left over from an earlier run is deleted first. Both ends come up
    with MTU `mtu`, INTERNAL_QUEUES queues, and IPv6, ARP and multicast off, so the kernel sends nothing of its own
    on them; `name_a` gets tx checksumming, TSO, GSO, GRO, scatter-gather
    and tx VLAN insertion (802.1Q and 802.1ad) off, checked with
    ``ethtool -k``. Raises LinkError if a name is taken by a non-veth
    device, the kernel refuses, or an offload stays on; the half-made pair
    is deleted then.
    """
    with _ipr(ipr) as ipr:
        for name in (name_a, name_b):
            delete_internal_pair(name, ipr)
        try:
            q = INTERNAL_QUEUES
            ipr.link("add", ifname=name_a, kind="veth", mtu=mtu, num_tx_queues=q, num_rx_queues=q,
                     peer={"ifname": name_b, "mtu": mtu, "num_tx_queues": q, "num_rx_queues": q})
        except NetlinkError as e:
            raise LinkError("create veth pair", f"{name_a}/{name_b}", e.code) from e
        try:
            indexes = _configure_pair(name_a, name_b, ipr)
        except BaseException:
            delete_internal_pair(name_a, ipr)
            raise
        return indexes


def _configure_pair(name_a: str, name_b: str, ipr: IPRoute) -> tuple[int, int]:
    indexes = []
    for name in (name_a, name_b):
        index = link_index(name, ipr)
        if index is None:
            raise LinkError("configure internal pair", name, errno.ENODEV)
        # before the link is up, so it never gets an IPv6 link-local address
        with suppress(FileNotFoundError):  # IPv6 is off in this kernel or namespace
            _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
        try:
            ipr.link("set", index=index, flags=IFF_UP | IFF_NOARP,
                     change=IFF_UP | IFF_NOARP | IFF_MULTICAST)
        except NetlinkError as e:
            raise LinkError("set up internal link", name, e.code) from e
        indexes.append(index)
    # VLAN insertion offloads apart: a device whose VLAN offloads are fixed
    # then still gets the others turned off and fails the check below by name
    _ethtool("-K", name_a, *[w for k in OFFLOADS_OFF if k not in _VLAN_OFFLOADS for w in (k, "off")])
    _ethtool("-K", name_a, *[w for k in _VLAN_OFFLOADS for w in (k, "off")])
    now = offloads(name_a)
    still_on = [f for f in OFFLOADS_OFF.values() if now.get(f, "off") != "off"]
    if still_on:
        raise LinkError("turn offloads off", name_a, errno.EOPNOTSUPP,
                        hint=f"still on: {', '.join(still_on)}")
    return indexes[0], indexes[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Debugging CLI; prints JSON; exit 1 with ``{"error": ...}`` on a bpftap error."""
    ap = argparse.ArgumentParser(prog="python -m bpftap.netlink",
                                 description="bpftap's netlink view of the current namespace",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    res = sub.add_parser("resolve", help="next hop toward ADDR")
    res.add_argument("addr", type=ip_address)
    res.add_argument("--wait", type=float, default=0.0, help="retry for this many seconds")
    sub.add_parser("links", help="name -> ifindex")
    match = sub.add_parser("match", help="links matching globs")
    match.add_argument("patterns", nargs="+")
    ens = sub.add_parser("ensure-pair", help="(re)create the internal veth pair")
    ens.add_argument("names", nargs="*", default=[INTERNAL_A, INTERNAL_B])
    dele = sub.add_parser("delete-pair", help="delete the internal veth pair")
    dele.add_argument("name", nargs="?", default=INTERNAL_A)
    args = ap.parse_args(argv)
    out: Any
    try:
        with IPRoute() as ipr:
            if args.cmd == "resolve":
                out = resolve_retry(args.addr, ipr, timeout=args.wait).to_json()
            elif args.cmd == "links":
                out = links(ipr)
            elif args.cmd == "match":
                out = match_interfaces(args.patterns, ipr)
            elif args.cmd == "ensure-pair":
                # at most two names, so never a second ipr (mypy cannot tell from a list)
                out = list(ensure_internal_pair(*args.names[:2], ipr=ipr))  # type: ignore[misc]
            else:
                delete_internal_pair(args.name, ipr)
                out = None
    except BpftapError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
