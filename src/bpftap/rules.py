"""Pure rules compiler: config rules in, `struct mirror_rule` entries out.

Nothing here touches the kernel. This is the one place where the config's
Python values become ABI bytes: addresses and masks go in network order
(as `abi.set_addr` lays them out), ports and numbers stay in host order,
exactly as bpf/mirror_abi.h documents each field.

Two matchers live beside the compiler so tests can prove the compiler
right: `reference_match` reads the Config as plainly as possible, and
`match_compiled` walks compiled entries the way `rule_matches()` in
bpf/mirror_tc.bpf.c does. For every packet both must pick the same rule.
Non-IP packets match nothing in either: the BPF program passes them
(counted as MS_NOT_IP) before it looks at any rule.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bpftap import abi
from bpftap.config import (
    ANY_PORTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    Action,
    Config,
    Direction,
    IPAddress,
    PortRange,
    Rule,
    Session,
)

# bytes a VXLAN copy gains: outer Ethernet 14 + IPv4 20 / IPv6 40 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD = {4: 50, 6: 70}

_ACTIONS = {Action.MIRROR: abi.MirrorAction.MIRROR, Action.SKIP: abi.MirrorAction.SKIP}
_WORDS = struct.Struct("=4I")  # a __be32[4] field as the CPU loads it


def assign_session_slots(sessions: Sequence[Session]) -> dict[str, int]:
    """Give each session a slot (its key in the `sessions` map and its bit in rules).

    Sessions with IPv4 remotes come first, then IPv6 ones (ascending outer
    header size, VXLAN_OVERHEAD), in config order within a family, so
    adding an IPv6 session never moves an IPv4 one.

    Raises ValueError if there are more than abi.MAX_SESSIONS sessions or
    a name repeats; a validated Config has neither.
    """
    if len(sessions) > abi.MAX_SESSIONS:
        raise ValueError(f"{len(sessions)} sessions; at most {abi.MAX_SESSIONS} fit")
    ordered = sorted(sessions, key=lambda s: VXLAN_OVERHEAD[s.remote.version])
    slots = {s.name: slot for slot, s in enumerate(ordered)}
    if len(slots) != len(sessions):
        raise ValueError("session names repeat")
    return slots


def compile_rule(rule: Rule, slots: Mapping[str, int]) -> abi.MirrorRule:
    """One Rule as a `struct mirror_rule`.

    Raises ValueError if a session of the rule has no slot, or a slot does
    not fit the 64-bit session mask.
    """
    out = abi.MirrorRule()
    for net, addr, mask in ((rule.src, out.src_net, out.src_mask), (rule.dst, out.dst_net, out.dst_mask)):
        if net is not None:  # "any" stays all zero: mask 0 matches every address
            abi.set_addr(addr, net.network_address.packed)
            abi.set_addr(mask, net.netmask.packed)
    for name in rule.sessions:
        slot = slots.get(name)
        if slot is None or not 0 <= slot < abi.MAX_SESSIONS:
            raise ValueError(f"rule {rule.number}: session {name!r} has no slot (got {slot})")
        out.sessions |= 1 << slot
    out.number = rule.number
    out.sport_lo, out.sport_hi = rule.src_ports
    out.dport_lo, out.dport_hi = rule.dst_ports
    out.family = rule.family or 0
    out.proto = rule.protocol or 0
    out.dirs = int(rule.direction)
    out.action = _ACTIONS[rule.action]
    return out


def compile_rules(config: Config, slots: Mapping[str, int]) -> list[abi.MirrorRule]:
    """All rules of `config` in ascending number; index i is position i of a rule slot.

    Raises ValueError as compile_rule does, or if there are more than
    abi.MAX_RULES rules (a validated Config has at most that many).
    """
    if len(config.rules) > abi.MAX_RULES:
        raise ValueError(f"{len(config.rules)} rules; at most {abi.MAX_RULES} fit")
    return [compile_rule(r, slots) for r in sorted(config.rules, key=lambda r: r.number)]


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
        return rule
    return None


def _port_in(ports: PortRange, port: int | None) -> bool:
    if ports == ANY_PORTS:
        return True
    return port is not None and ports[0] <= port <= ports[1]


def match_compiled(rules: Sequence[abi.MirrorRule], pkt: PacketInfo) -> int | None:
    """Index of the first compiled rule matching `pkt`, as the BPF program decides.

    Follows rule_matches() in bpf/mirror_tc.bpf.c step by step: direction
    mask, family (0 = any), protocol (0 = any), masked compare of the four
    address words, then ports (0-65535 = any, else the packet must carry
    ports in the range). Returns None for no match and for non-IP packets.
    """
    if pkt.family not in (4, 6) or pkt.src is None or pkt.dst is None:
        return None
    src = _WORDS.unpack(pkt.src.packed.ljust(16, b"\0"))
    dst = _WORDS.unpack(pkt.dst.packed.ljust(16, b"\0"))
    for i, r in enumerate(rules):
        if not r.dirs & pkt.direction:
            continue
        if r.family and r.family != pkt.family:
            continue
        if r.proto and r.proto != pkt.proto:
            continue
        if not _addr_in(src, r.src_net, r.src_mask) or not _addr_in(dst, r.dst_net, r.dst_mask):
            continue
        if _ports_in(pkt.sport, r.sport_lo, r.sport_hi) and _ports_in(pkt.dport, r.dport_lo, r.dport_hi):
            return i
    return None


def _addr_in(addr: tuple[int, ...], net: Sequence[int], mask: Sequence[int]) -> bool:
    return all(a & m == n for a, m, n in zip(addr, mask, net, strict=True))


def _ports_in(port: int | None, lo: int, hi: int) -> bool:
    if lo == 0 and hi == 0xFFFF:
        return True
    return port is not None and lo <= port <= hi
