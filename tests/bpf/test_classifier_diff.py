"""Differential test: reference matcher == compiled tables == the kernel, on random rule sets and packets.

1,000 seeded random rule sets over a small address and port space (so rules
overlap and nest), with VLAN, TCP flag and interface conditions, 20 packets
each (some VLAN-tagged, on one of two interfaces), through BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from bpftap import abi
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject, SkBuff
from bpftap.compile.classifier import CompiledRules, compile_rules, match_compiled
from bpftap.compile.reference import PacketInfo, reference_match
from bpftap.compile.slots import assign_session_slots
from bpftap.config import Config, Direction, parse_config
from bpftap.config.fields import VLAN_UNTAGGED

from .conftest import KernelNs

pytestmark = pytest.mark.kernel

RULE_SETS = int(__import__("os").environ.get("DIFF_SETS", "1000"))
PACKETS = 20
V4 = [f"198.18.{a}.{b}" for a in (0, 1, 128) for b in (1, 2, 130)]
V6 = [f"2001:db8:{a:x}::{b:x}" for a in (0, 1, 0x8000) for b in (1, 2, 0x80)]
PORTS = [0, 1, 53, 80, 1023, 1024, 8080, 65535]
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


def cidr(rng: random.Random, family: int) -> str:
    host = rng.choice(V4 if family == 4 else V6)
    plen = rng.choice([0, 8, 15, 16, 17, 24, 32] if family == 4 else [0, 32, 33, 48, 64, 128])
    return str(ipaddress.ip_network(f"{host}/{plen}", strict=False))


def ports(rng: random.Random) -> str | int | list[str | int]:
    def one() -> str | int:
        lo, hi = sorted(rng.sample(PORTS, 2))
        return rng.choice([lo, f"{lo}-{hi}"])
    return rng.choice(["any", one(), one(), [one() for _ in range(rng.randint(1, 4))]])


def random_config(rng: random.Random) -> Config:
    sessions = [{"name": "a", "remote": "198.18.2.1", "vni": 1}, {"name": "b", "remote": "2001:db8:2::1", "vni": 2}]
    rules = []
    for number in rng.sample(range(1, 1000), rng.randint(1, 12)):
        rule: dict[str, object] = {"number": number, "direction": rng.choice(["ingress", "egress", "both"])}
        family = rng.choice([None, 4, 6])
        proto = rng.choice(["any", "tcp", "udp", "sctp"] + (["icmp"] if family != 6 else [])
                           + (["icmpv6"] if family != 4 else []))
        rule["protocol"] = proto
        if proto == "icmp":
            family = 4
        if proto == "icmpv6":
            family = 6
        if family and rng.random() < 0.7:
            rule[rng.choice(["src", "dst"])] = cidr(rng, family)
        if family and rng.random() < 0.3:
            rule["src"], rule["dst"] = cidr(rng, family), cidr(rng, family)
        if proto not in ("icmp", "icmpv6"):
            if rng.random() < 0.5:
                rule["dst_ports"] = ports(rng)
            if rng.random() < 0.3:
                rule["src_ports"] = ports(rng)
        if rng.random() < 0.15:
            rule["vlan"] = rng.choice([7, 100, "untagged"])
        if proto == "tcp" and rng.random() < 0.3:
            rule["tcp_flags"] = rng.choice(["syn", "syn,!ack", "ack", "!syn,!rst"])
        if rng.random() < 0.15:
            rule["interface"] = rng.choice(["k0", "k1", "k*"])
        if rng.random() < 0.2:
            rule["action"] = "skip"
        else:
            rule["sessions"] = rng.sample(["a", "b"], rng.randint(1, 2))
        rules.append(rule)
    return parse_config({"sources": [{"interface": "eth0"}], "sessions": sessions, "rules": rules}, "random.yaml")


def random_packet(rng: random.Random, ifindex: dict[str, int]) -> tuple[PacketInfo, bytes, int]:
    family = rng.choice([4, 6])
    hosts = V4 if family == 4 else V6
    src, dst = ipaddress.ip_address(rng.choice(hosts)), ipaddress.ip_address(rng.choice(hosts))
    name = rng.choice([*PROTOS, "gre"])
    proto = PROTOS.get(name, 47)
    if (name == "icmp" and family == 6) or (name == "icmpv6" and family == 4):
        proto = 58 if family == 6 else 1
    later_fragment = proto in (6, 17, 132) and rng.random() < 0.15
    sport, dport = rng.choice(PORTS), rng.choice(PORTS)
    l3 = IP(src=str(src), dst=str(dst), proto=proto) if family == 4 else IPv6(src=str(src), dst=str(dst), nh=proto)
    if later_fragment:
        if family == 4:
            l3.frag = 10
        else:
            l3 = IPv6(src=str(src), dst=str(dst)) / IPv6ExtHdrFragment(offset=10, nh=proto)
        l4 = Raw(b"\x00" * 24)
    elif proto == 6:
        flags = rng.choice([0x02, 0x12, 0x10, 0x04, 0x18])
        l4 = TCP(sport=sport, dport=dport, flags=flags)
    elif proto in (17, 132):
        l4 = {17: UDP, 132: SCTP}[proto](sport=sport, dport=dport)
    else:
        l4 = Raw(b"\x08\x00" + b"\x00" * 22)
    has_ports = proto in (6, 17, 132) and not later_fragment
    direction = rng.choice([Direction.INGRESS, Direction.EGRESS])
    vlan = rng.choice([None, None, 7, 100, 4000])
    ifname = rng.choice(list(ifindex))
    info = PacketInfo(
        direction, family, proto, src, dst, sport if has_ports else None, dport if has_ports else None,
        vlan=VLAN_UNTAGGED if vlan is None else vlan,
        tcp_flags=flags if proto == 6 and has_ports else None,
        ifname=ifname,
    )
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return info, bytes(l2 / l3 / l4), ifindex[ifname]


def agree(obj: BpfObject, tables: Tables, cfg: Config, compiled: CompiledRules, info: PacketInfo, frame: bytes,
          index: int) -> int | None:
    """Run `frame` through stage 1 of the live rule set; assert it took the rule the reference takes (position)."""
    want = reference_match(cfg, info)
    position = match_compiled(compiled, info)
    assert (None if position is None else cfg.rules[position]) == want, (cfg, info)
    prog = obj.program(abi.PROG_INGRESS if info.direction == Direction.INGRESS else abi.PROG_EGRESS)
    before = tables.counters()
    number = cfg.rules[position].number if position is not None else 0
    hit_before = tables.rule_stats(number).packets
    assert prog.test_run(frame, ctx=SkBuff(ifindex=index)).retval == abi.MIRROR_PASS
    after = tables.counters()
    if position is None:
        assert after["no_match"] - before["no_match"] == 1, (cfg, info)
    else:
        assert tables.rule_stats(number).packets == hit_before + 1, (cfg, info, position)
        assert (after["matched"] + after["skipped"]) - (before["matched"] + before["skipped"]) == 1
    return position


def test_reference_compiled_and_kernel_agree(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    rng = random.Random(20261126)
    ifindex = {"k0": kernel_ns.k0, "k1": kernel_ns.k1}
    checked = matched = 0
    for _ in range(RULE_SETS):
        cfg = random_config(rng)
        compiled = compile_rules(cfg, assign_session_slots(cfg.sessions), ifindex)
        tables.write_rules(compiled, kernel_ns.k1)
        for _ in range(PACKETS):
            info, frame, index = random_packet(rng, ifindex)
            matched += agree(obj, tables, cfg, compiled, info, frame, index) is not None
            checked += 1
    assert checked == RULE_SETS * PACKETS
    assert matched > checked // 10, "the generator should produce plenty of matches"


def test_coarse_masks_turn_away_only_what_cannot_match(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """2,048 rules over four coarse blocks (COARSE_RULES positions each): matches past the first block,
    packets turned away by the coarse masks, and one whose masks share a block but no rule."""
    obj, tables = loaded
    rules: list[dict[str, object]] = []
    for pos in range(2048):  # UDP rules in blocks 0-1, TCP rules in blocks 2-3, 128 a port
        proto, port = ("udp", 10000 + pos // 128) if pos < 1024 else ("tcp", 20000 + (pos - 1024) // 128)
        rules.append({"number": pos + 1, "protocol": proto, "dst_ports": port, "sessions": ["a"]})
    rules[3] = {"number": 4, "protocol": "sctp", "dst_ports": 30000, "sessions": ["a"]}
    session = {"name": "a", "remote": "198.18.2.1", "vni": 1}
    cfg = parse_config({"sources": [{"interface": "eth0"}], "sessions": [session], "rules": rules}, "coarse.yaml")
    compiled = compile_rules(cfg, assign_session_slots(cfg.sessions))
    tables.write_rules(compiled, kernel_ns.k1)
    assert 2048 // abi.COARSE_RULES == 4
    cases = [(UDP, 10005, 640), (TCP, 20002, 1280), (SCTP, 30000, 3),  # matches in blocks 1, 2 and 0
             (UDP, 20004, None), (TCP, 10001, None),  # masks in different blocks
             (UDP, 30000, None)]  # masks share block 0, the rules do not
    for layer, dport, want in cases:
        for l3 in (IP(src="198.18.0.1", dst="198.18.1.1"), IPv6(src="2001:db8::1", dst="2001:db8:1::1")):
            packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / layer(sport=40000, dport=dport)
            proto = {UDP: 17, TCP: 6, SCTP: 132}[layer]
            info = PacketInfo(Direction.INGRESS, l3.version, proto, ipaddress.ip_address(l3.src),
                              ipaddress.ip_address(l3.dst), 40000, dport,
                              tcp_flags=int(packet[TCP].flags) if layer is TCP else None)
            assert agree(obj, tables, cfg, compiled, info, bytes(packet), kernel_ns.k0) == want, (layer, dport)
