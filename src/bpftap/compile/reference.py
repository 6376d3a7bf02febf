"""Rule semantics in plain Python: the reference matcher (pure, no kernel).

`reference_match` reads the Config as plainly as possible: the meaning of a
rule set that the compiled classifier (bpftap.compile.classifier, and the
kernel) must reproduce for every packet. Non-IP packets match nothing: the BPF
program passes them (counted as MS_NOT_IP) before it looks at any rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from bpftap.config.fields import VLAN_UNTAGGED
from bpftap.config.model import IPPROTO_ICMP, IPPROTO_ICMPV6, Config, Direction, Rule
from bpftap.config.values import ANY_PORTS, IPAddress, Ports


@dataclass(frozen=True)
class PacketInfo:
    """What classification sees of one packet (`struct pkt_info` in parse.bpf.h).

    `direction` is INGRESS or EGRESS. `family` is 4 or 6; anything else is
    a non-IP packet, which matches no rule, and then src and dst may be
    None. `sport`/`dport` are None when the packet carries no ports: not
    TCP, UDP or SCTP, or a fragment after the first.
    """

    direction: Direction
    family: int
    proto: int
    src: IPAddress | None
    dst: IPAddress | None
    sport: int | None = None
    dport: int | None = None
    vlan: int = VLAN_UNTAGGED  # outer VLAN id
    tcp_flags: int | None = None  # TCP packets only
    ifname: str | None = None  # the source interface it was seen on
    frame: bytes | None = None  # the Ethernet frame as tcpdump sees it: what a rule's filter reads


def filter_accepts(expression: str, pkt: PacketInfo) -> bool:
    """libpcap's verdict on the packet's frame (a packet without one matches no filter)."""
    from bpftap.filter.pcap import compile_filter

    return pkt.frame is not None and compile_filter(expression).matches(pkt.frame)


def reference_match(config: Config, pkt: PacketInfo) -> Rule | None:
    """The first rule by number that matches `pkt`, read straight off the Config.

    A rule whose port range is narrower than 0-65535 does not match a
    packet without ports. Returns None when nothing matches, and always for
    a non-IP packet.
    """
    if pkt.family not in (4, 6):
        return None
    for rule in sorted(config.rules, key=lambda r: r.number):
        if not rule.direction & pkt.direction:
            continue
        if rule.protocol == IPPROTO_ICMP and pkt.family != 4:
            continue
        if rule.protocol == IPPROTO_ICMPV6 and pkt.family != 6:
            continue
        if rule.protocol is not None and rule.protocol != pkt.proto:
            continue
        # an address of the other family is never inside a network
        if rule.src is not None and pkt.src not in rule.src:
            continue
        if rule.dst is not None and pkt.dst not in rule.dst:
            continue
        if not _port_in(rule.src_ports, pkt.sport) or not _port_in(rule.dst_ports, pkt.dport):
            continue
        if rule.vlan is not None and rule.vlan != pkt.vlan:
            continue
        if rule.tcp_flags is not None and (
                pkt.tcp_flags is None or pkt.tcp_flags & rule.tcp_flags[0] != rule.tcp_flags[1]):
            continue
        if rule.interface is not None and (pkt.ifname is None or not fnmatch.fnmatchcase(pkt.ifname, rule.interface)):
            continue
        if rule.filter is not None and not filter_accepts(rule.filter, pkt):
            continue
        return rule
    return None


def _port_in(ports: Ports, port: int | None) -> bool:
    if ports == ANY_PORTS:
        return True
    return port is not None and any(lo <= port <= hi for lo, hi in ports)
