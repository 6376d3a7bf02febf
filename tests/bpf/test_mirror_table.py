"""The mirror programs specified as tables of packets, run through BPF_PROG_TEST_RUN.

Stage 1 (mirror_ingress/mirror_egress): every row must come out with the
neutral verdict, the frame and its mark untouched, and the right first match
(or the right reason for none). Stage 2 (mirror_encap): the copy, byte for
byte, against headers built independently with scapy.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from bpftap import abi
from bpftap.agent.links import LinkGovernor, LinkState
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject, SkBuff
from bpftap.compile.classifier import compile_rules
from bpftap.compile.slots import assign_session_slots
from bpftap.config import parse_config
from bpftap.netlink import NextHop

from .conftest import KernelNs

pytestmark = pytest.mark.kernel

TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
MAC_A, MAC_B = "02:00:00:00:01:01", "02:00:00:00:01:02"

CONFIG = {
    "sources": [{"interface": "eth0"}],
    "sessions": [
        {"name": "ids4", "remote": "198.18.2.1", "vni": 42},
        {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43},
    ],
    "rules": [
        {"number": 10, "action": "skip", "protocol": "udp", "dst": "198.18.3.99"},
        {"number": 20, "protocol": "udp", "dst_ports": 53, "sessions": ["ids4"]},
        {"number": 30, "protocol": "tcp", "src": "2001:db8:1::/64", "dst_ports": "80-89", "sessions": ["ids6"]},
        {"number": 40, "protocol": "icmp", "sessions": ["ids4", "ids6"]},
        {"number": 50, "direction": "egress", "src": "198.18.9.0/24", "sessions": ["ids4"]},
    ],
}


def eth() -> Ether:
    return Ether(src=MAC_A, dst=MAC_B)


def v4(dst: str = "198.18.3.1", **kw: object) -> IP:
    return IP(src="198.18.1.1", dst=dst, **kw)


def v6(**kw: object) -> IPv6:
    return IPv6(src="2001:db8:1::1", dst="2001:db8:3::1", **kw)


PAYLOAD = Raw(b"bpftap-" * 4)


@dataclass
class Row:
    description: str
    frame: bytes
    direction: str  # ingress | egress
    rule: int | None  # number of the first matching rule
    counter: str  # the mirror_stat that must move by one
    mark: int = 0


ROWS = [
    Row("v4 udp dport 53", bytes(eth() / v4() / UDP(sport=4000, dport=53) / PAYLOAD), "ingress", 20, "matched"),
    Row("v4 udp dport 54: no rule", bytes(eth() / v4() / UDP(dport=54) / PAYLOAD), "ingress", None, "no_match"),
    Row("skip wins over a later mirror", bytes(eth() / v4("198.18.3.99") / UDP(dport=53)), "ingress", 10, "skipped"),
    Row(
        "v4 with options",
        bytes(eth() / v4(options=[IPOption_RR(routers=["198.18.0.1"])]) / UDP(dport=53) / PAYLOAD),
        "ingress",
        20,
        "matched",
    ),
    Row(
        "v4 later fragment has no ports",
        bytes(eth() / v4(frag=3, proto=17) / Raw(b"\x00" * 24)),
        "ingress",
        None,
        "no_match",
    ),
    Row("802.1Q", bytes(eth() / Dot1Q(vlan=7) / v4() / UDP(dport=53) / PAYLOAD), "ingress", 20, "matched"),
    Row(
        "QinQ 802.1ad + 802.1Q",
        bytes(eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / v4() / UDP(dport=53) / PAYLOAD),
        "egress",
        20,
        "matched",
    ),
    Row("v6 tcp 80", bytes(eth() / v6() / TCP(sport=40000, dport=80) / PAYLOAD), "ingress", 30, "matched"),
    Row(
        "v6 hop-by-hop, routing and destination options",
        bytes(
            eth() / v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(dport=85) / PAYLOAD
        ),
        "ingress",
        30,
        "matched",
    ),
    Row(
        "v6 first fragment keeps its ports",
        bytes(eth() / v6() / IPv6ExtHdrFragment(offset=0, m=1) / TCP(dport=89) / PAYLOAD),
        "ingress",
        30,
        "matched",
    ),
    Row(
        "v6 later fragment has no ports",
        bytes(eth() / v6() / IPv6ExtHdrFragment(offset=10, nh=6) / Raw(b"\x00" * 20)),
        "ingress",
        None,
        "no_match",
    ),
    Row("v6 tcp 90: no rule", bytes(eth() / v6() / TCP(dport=90)), "ingress", None, "no_match"),
    Row("icmp echo", bytes(eth() / v4() / ICMP()), "ingress", 40, "matched"),
    Row("icmpv6 is not icmp", bytes(eth() / v6() / ICMPv6EchoRequest()), "ingress", None, "no_match"),
    Row("egress-only rule on egress",
        bytes(eth() / IP(src="198.18.9.5", dst="198.18.3.1") / UDP(sport=5000, dport=6000)), "egress", 50, "matched"),
    Row("egress-only rule on ingress",
        bytes(eth() / IP(src="198.18.9.5", dst="198.18.3.1") / UDP(sport=5000, dport=6000)),
        "ingress", None, "no_match"),
    Row("ARP is not IP", bytes(eth() / ARP(psrc="198.18.1.1", pdst="198.18.1.2")), "ingress", None, "not_ip"),
    # test_run refuses IP-typed frames shorter than an IP header: truncate behind a tag
    Row("truncated IPv4 header", bytes(eth() / Dot1Q() / v4() / UDP(dport=53))[:28], "ingress", None, "malformed"),
    Row("IPv4 ihl below 5", bytes(eth() / v4(ihl=4) / UDP(dport=53)), "ingress", None, "malformed"),
    Row("UDP header cut before the ports", bytes(eth() / v4() / UDP(dport=53))[:35], "ingress", None, "malformed"),
    Row("truncated IPv6 header", bytes(eth() / Dot1Q() / v6() / TCP(dport=80))[:40], "ingress", None, "malformed"),
    Row(
        "IPv6 extension header cut short",
        bytes(eth() / v6(nh=0))[:54] + b"\x06",
        "ingress",
        None,
        "malformed",
    ),
    Row(
        "a copy (loop guard mark) is never mirrored again",
        bytes(eth() / v4() / UDP(dport=53) / PAYLOAD),
        "ingress",
        None,
        "loop",
        mark=abi.MIRROR_COPY_MARK,
    ),
    Row(
        "the original's mark survives a match",
        bytes(eth() / v4() / UDP(dport=53) / PAYLOAD),
        "egress",
        20,
        "matched",
        mark=0x1234,
    ),
]


def hop(ns: KernelNs, family: int, mtu: int = 9000) -> NextHop:
    src = "198.18.2.254" if family == 4 else "2001:db8:2::fe"
    return NextHop(ns.k0, "k0", ipaddress.ip_address(src), b"\x02\x00\x00\x00\x02\xfe", b"\x02\x00\x00\x00\x02\x01",
                   mtu)


def program(tables: Tables, ns: KernelNs, config: dict[str, object] = CONFIG,
            hops: dict[str, NextHop | None] | None = None):
    """Write `config` into the maps as the agent does; returns (config, slots)."""
    cfg = parse_config(config, "test.yaml")
    slots = assign_session_slots(cfg.sessions)
    for sess in cfg.sessions:
        default = hop(ns, sess.remote.version)
        for member in range(len(sess.members)):
            tables.write_session(slots[sess.name], sess, (hops or {}).get(sess.name, default), member=member)
        tables.write_buckets(slots[sess.name], sess)
    tables.write_rules(compile_rules(cfg, slots), ns.k1)
    return cfg, slots


@pytest.mark.parametrize("row", ROWS, ids=[r.description for r in ROWS])
def test_source_program(row: Row, loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns)
    before = tables.counters()
    prog = obj.program(abi.PROG_INGRESS if row.direction == "ingress" else abi.PROG_EGRESS)
    result = prog.test_run(row.frame, ctx=SkBuff(mark=row.mark))
    after = tables.counters()
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}

    assert result.retval == abi.MIRROR_PASS, f"{row.description}: verdict {result.retval}"
    assert result.data == row.frame, f"{row.description}: frame changed\n{result.data.hex()}\n{row.frame.hex()}"
    assert result.ctx is not None and result.ctx.mark == row.mark, "the original's mark was not restored"
    assert moved.get("seen") == 1 and moved.get(row.counter) == 1, f"{row.description}: counters moved {moved}"
    hits = {r.number: tables.rule_stats(r.number).packets for r in cfg.rules}
    assert hits == {r.number: int(r.number == row.rule) for r in cfg.rules}, f"{row.description}: rule hits {hits}"


def xfer_ctx(tables: Tables, cfg_rules: tuple[object, ...], number: int, egress: bool = False) -> SkBuff:
    position = [r.number for r in cfg_rules].index(number)  # type: ignore[attr-defined]
    key = tables.config().active_slot * abi.MAX_RULES + position
    return SkBuff(mark=abi.XFER_TAG | (abi.XFER_EGRESS if egress else 0) | key)


def expect_v4(inner: bytes, sport: int, vni: int) -> bytes:
    outer = Ether(src="02:00:00:00:02:fe", dst="02:00:00:00:02:01") / IP(
        src="198.18.2.254", dst="198.18.2.1", flags="DF", id=0, ttl=64
    )
    return bytes(outer / UDP(sport=sport, dport=4789, chksum=0) / VXLAN(vni=vni, flags=0x08) / Raw(inner))


def expect_v6(inner: bytes, sport: int, vni: int, fl: int) -> bytes:
    outer = Ether(src="02:00:00:00:02:fe", dst="02:00:00:00:02:01") / IPv6(
        src="2001:db8:2::fe", dst="2001:db8:2::1", hlim=64, fl=fl
    )
    # over IPv6 the outer UDP checksum is computed (scapy fills it in)
    return bytes(outer / UDP(sport=sport, dport=4789) / VXLAN(vni=vni, flags=0x08) / Raw(inner))


INNER_V4 = bytes(eth() / v4() / UDP(sport=4000, dport=53) / PAYLOAD)
INNER_VLAN = bytes(eth() / Dot1Q(vlan=7) / v4() / UDP(dport=53) / PAYLOAD)


@pytest.mark.parametrize("inner", [INNER_V4, INNER_VLAN], ids=["plain", "802.1Q in the frame"])
def test_encap_vxlan4_byte_for_byte(inner: bytes, loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns)
    result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=xfer_ctx(tables, cfg.rules, 20))
    assert result.retval == TC_ACT_REDIRECT
    sport = int.from_bytes(result.data[34:36], "big")
    assert 49152 <= sport <= 65535
    assert result.data == expect_v4(inner, sport, 42), Ether(result.data).show2(dump=True)
    assert result.ctx is not None and result.ctx.mark == abi.MIRROR_COPY_MARK
    stats = tables.session_stats("ids4")
    assert (stats.packets, stats.bytes) == (1, len(result.data))


def test_encap_vxlan6_byte_for_byte(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns)
    inner = bytes(eth() / v6() / TCP(sport=40000, dport=80) / PAYLOAD)
    result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=xfer_ctx(tables, cfg.rules, 30))
    assert result.retval == TC_ACT_REDIRECT
    fl = int.from_bytes(result.data[14:18], "big") & 0xFFFFF
    sport = int.from_bytes(result.data[54:56], "big")
    assert result.data == expect_v6(inner, sport, 43, fl), Ether(result.data).show2(dump=True)


def test_encap_two_sessions_v4_clone_then_v6(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """Rule 40 feeds ids4 and ids6: the IPv4 copy is cloned out, the IPv6 one is the skb itself."""
    obj, tables = loaded
    cfg, _ = program(tables, kernel_ns)
    inner = bytes(eth() / v4() / ICMP() / PAYLOAD)
    result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=xfer_ctx(tables, cfg.rules, 40))
    assert result.retval == TC_ACT_REDIRECT
    fl = int.from_bytes(result.data[14:18], "big") & 0xFFFFF
    assert result.data == expect_v6(inner, int.from_bytes(result.data[54:56], "big"), 43, fl)
    assert tables.session_stats("ids4").packets == 1
    assert tables.session_stats("ids6").packets == 1
    assert tables.counters()["copy_sent"] == 2


def test_encap_counts_every_copy_not_sent(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    # no room for a fragment
    cfg, _ = program(tables, kernel_ns, hops={"ids4": None, "ids6": hop(kernel_ns, 6, mtu=55)})
    inner = bytes(eth() / v4() / ICMP() / PAYLOAD)
    result = obj.program(abi.PROG_ENCAP).test_run(inner, ctx=xfer_ctx(tables, cfg.rules, 40))
    assert result.retval == TC_ACT_SHOT
    assert tables.session_stats("ids4").unresolved == 1
    assert tables.session_stats("ids6").oversize == 1
    counters = tables.counters()
    assert (counters["unresolved"], counters["oversize"], counters["copy_sent"]) == (1, 1, 0)


def test_encap_drops_frames_without_our_tag(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    program(tables, kernel_ns)
    result = obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=SkBuff(mark=0x1234))
    assert result.retval == TC_ACT_SHOT
    assert tables.counters()["xfer_bad"] == 1


def test_staged_sessions_never_reach_the_live_rule_set(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """A reload stages its sessions beside the live ones: copies in flight keep their rule set's sessions."""
    obj, tables = loaded
    set_a = {"sources": [{"interface": "eth0"}], "sessions": [{"name": "a", "remote": "198.18.2.1", "vni": 42}],
             "rules": [{"number": 20, "protocol": "udp", "dst_ports": 53, "sessions": ["a"]}]}
    set_b = {**set_a, "sessions": [{"name": "b", "remote": "198.18.2.1", "vni": 77}],
             "rules": [{"number": 20, "protocol": "udp", "dst_ports": 53, "sessions": ["b"]}]}
    cfg_a, _ = program(tables, kernel_ns, set_a)
    live_a = xfer_ctx(tables, cfg_a.rules, 20)
    # stage set B's session in the same session slot 0, without flipping yet
    cfg_b = parse_config(set_b, "test.yaml")
    tables.write_session(0, cfg_b.sessions[0], hop(kernel_ns, 4))

    def vni_of(ctx: SkBuff) -> int:
        out = obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=ctx)
        assert out.retval == TC_ACT_REDIRECT
        return int.from_bytes(out.data[46:49], "big")

    assert vni_of(live_a) == 42
    assert tables.session_stats("a").packets == 1
    tables.write_rules(compile_rules(cfg_b, {"b": 0}), kernel_ns.k1)
    assert vni_of(xfer_ctx(tables, cfg_b.rules, 20)) == 77
    assert vni_of(live_a) == 42, "a clone handed over before the flip still finds its own session"
    assert tables.session_stats("b").packets == 1


def test_sampling_sends_exactly_one_copy_in_n(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg_data = {**CONFIG, "sessions": [{"name": "ids4", "remote": "198.18.2.1", "vni": 42, "sample": 10},
                                       {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43}]}
    cfg, _ = program(tables, kernel_ns, cfg_data)
    ctx = xfer_ctx(tables, cfg.rules, 20)
    encap = obj.program(abi.PROG_ENCAP)
    for _ in range(1000):  # test runs stay on one CPU: the per-CPU count is exact
        encap.test_run(INNER_V4, ctx=ctx)
    stats = tables.session_stats("ids4")
    assert (stats.packets, stats.sampled_out) == (100, 900)
    assert tables.counters()["sampled_out"] == 900


def test_rate_limit_allows_the_burst_then_the_rate(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """100 copies/s with 100 ms of burst: a tight loop of 1,000 gets the burst and what accrues meanwhile."""
    obj, tables = loaded
    cfg_data = {**CONFIG, "sessions": [{"name": "ids4", "remote": "198.18.2.1", "vni": 42,
                                        "rate_limit": {"pps": 100}},
                                       {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43}]}
    cfg, _ = program(tables, kernel_ns, cfg_data)
    ctx = xfer_ctx(tables, cfg.rules, 20)
    encap = obj.program(abi.PROG_ENCAP)
    start = time.monotonic()
    for _ in range(1000):
        encap.test_run(INNER_V4, ctx=ctx)
    elapsed = time.monotonic() - start
    stats = tables.session_stats("ids4")
    assert stats.packets + stats.rate_limited == 1000
    burst = 100 * abi.RATE_BURST_NS // 1_000_000_000
    assert burst <= stats.packets <= burst + int(100 * elapsed) + 1, (stats.packets, elapsed)


def test_collector_group_sends_both_directions_of_a_flow_to_one_member(
    loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs
) -> None:
    obj, tables = loaded
    remotes = ["198.18.2.1", "198.18.2.2", "198.18.2.3"]
    data = {**CONFIG, "sessions": [{"name": "ids4", "remotes": remotes, "vni": 42},
                                   {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43}]}
    cfg, _ = program(tables, kernel_ns, data)
    ctx = xfer_ctx(tables, cfg.rules, 20)
    encap = obj.program(abi.PROG_ENCAP)
    chosen = {}
    for i in range(60):
        a, b = f"198.18.1.{i + 1}", f"198.18.3.{(i * 7) % 200 + 1}"
        ways = []
        for src, dst, sport, dport in ((a, b, 1024 + i, 53), (b, a, 53, 1024 + i)):
            frame = bytes(eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / PAYLOAD)
            out = encap.test_run(frame, ctx=ctx)
            assert out.retval == TC_ACT_REDIRECT
            ways.append(str(IP(out.data[14:]).dst))
        assert ways[0] == ways[1], f"flow {i}: the two directions went to {ways}"
        chosen[i] = ways[0]
    counts = {r: list(chosen.values()).count(r) for r in remotes}
    assert all(counts.values()), counts
    assert sum(tables.session_stats(f"ids4@{r}").packets for r in remotes) == 120


SNAP_CONFIG = {**CONFIG, "sessions": [{"name": "ids4", "remote": "198.18.2.1", "vni": 42},
                                      {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43, "snaplen": 64}]}


def test_a_truncating_session_gets_a_clone_of_its_own(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """Rule 40 feeds a whole-frame session and a truncating one: stage 1 hands over two clones."""
    obj, tables = loaded
    cfg = parse_config(SNAP_CONFIG, "test.yaml")
    tables.write_rules(compile_rules(cfg, assign_session_slots(cfg.sessions)), 0)  # no device: count the clones
    result = obj.program(abi.PROG_INGRESS).test_run(bytes(eth() / v4() / ICMP() / PAYLOAD))
    assert result.retval == abi.MIRROR_PASS
    assert tables.counters()["clone_fail"] == 2


def test_snaplen_cuts_only_its_own_copy(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    obj, tables = loaded
    cfg, slots = program(tables, kernel_ns, SNAP_CONFIG)
    inner = bytes(eth() / v4() / ICMP() / PAYLOAD)
    encap = obj.program(abi.PROG_ENCAP)
    whole = encap.test_run(inner, ctx=xfer_ctx(tables, cfg.rules, 40))  # pass 0: ids4 alone, whole frame
    assert whole.retval == TC_ACT_REDIRECT and whole.data[50:] == inner
    snap_ctx = xfer_ctx(tables, cfg.rules, 40)
    snap_ctx.mark |= (slots["ids6"] + 1) << abi.XFER_PASS_SHIFT
    cut = encap.test_run(inner, ctx=snap_ctx)  # pass for ids6: cut to 64 bytes
    assert cut.retval == TC_ACT_REDIRECT
    assert cut.data[70:] == inner[:64]
    fl = int.from_bytes(cut.data[14:18], "big") & 0xFFFFF
    sport = int.from_bytes(cut.data[54:56], "big")
    assert cut.data == expect_v6(inner[:64], sport, 43, fl), "lengths and the UDP checksum describe the cut frame"
    assert (tables.session_stats("ids4").truncated, tables.session_stats("ids6").truncated) == (0, 1)
    assert tables.session_stats("ids6").packets == 1


def test_copy_budget_sheds_low_priority_first(loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs) -> None:
    """100 copies/s for the node (a 10-copy bucket): low may drain it to half, high to empty."""
    obj, tables = loaded
    data = {**CONFIG, "copy_budget": {"pps": 100},
            "sessions": [{"name": "ids4", "remote": "198.18.2.1", "vni": 42, "priority": "high"},
                         {"name": "low", "remote": "198.18.2.1", "vni": 44, "priority": "low"},
                         {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43}],
            "rules": [{"number": 20, "protocol": "udp", "dst_ports": 53, "sessions": ["ids4", "low"]}]}
    cfg, _ = program(tables, kernel_ns, data)
    tables.set_budget(*cfg.copy_budget)
    ctx = xfer_ctx(tables, cfg.rules, 20)
    for _ in range(50):
        obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=ctx)
    high, low = tables.session_stats("ids4"), tables.session_stats("low")
    assert high.packets + high.shed == 50 and low.packets + low.shed == 50
    assert low.packets <= 10 * abi.PRIO_RESERVE_LOW // 100 + 1, low.packets  # stops at its reserve
    assert high.packets >= low.packets + 3, (high.packets, low.packets)
    assert low.shed > high.shed and tables.counters()["shed"] == low.shed + high.shed


def links(obj: BpfObject, ns: KernelNs, capacity: int) -> LinkGovernor:
    """k0, the sessions' egress, a listed link of `capacity` bit/s, no headroom; no thread follows its queue."""
    gov = LinkGovernor(obj.map(abi.MAP_LINK_RATES), obj.map(abi.MAP_LINK_STATE))
    gov.set_links([LinkState("k0", ns.k0, capacity, 0.0)])
    return gov


def test_a_link_takes_every_originals_bytes_and_never_a_copys(loaded: tuple[BpfObject, Tables],
                                                               kernel_ns: KernelNs) -> None:
    """mirror_link on k0's egress: an original's bytes leave the bucket (into debt), a copy (its mark) passes free."""
    obj, _ = loaded
    links(obj, kernel_ns, 8_000_000)  # 5 ms of bucket: 40,000 bits
    time.sleep(0.02)
    prog = obj.program(abi.PROG_LINK)
    original = bytes(eth() / v4() / UDP(sport=1024, dport=53) / Raw(b"x" * 958))  # 1,000 bytes
    start = time.monotonic_ns()
    assert prog.test_run(original, ctx=SkBuff(ifindex=kernel_ns.k0)).retval == abi.MIRROR_PASS
    state = obj.map(abi.MAP_LINK_STATE).lookup(kernel_ns.k0, abi.LinkState)
    assert state.orig_bytes == 1000
    # (tokens are bit-ns: the bucket refills 8e6 of them per ns elapsed, however slow this machine is)
    refilled = (time.monotonic_ns() - start) * 8_000_000
    # full, less 8,000 bits, plus what refilled meanwhile
    assert 32_000e9 <= state.bit_tokens <= 32_000e9 + refilled, state.bit_tokens
    for _ in range(10):
        prog.test_run(original, ctx=SkBuff(ifindex=kernel_ns.k0))
    state = obj.map(abi.MAP_LINK_STATE).lookup(kernel_ns.k0, abi.LinkState)
    refilled = (time.monotonic_ns() - start) * 8_000_000
    assert state.orig_bytes == 11_000
    # 80,000 bits more than the bucket held: a debt, of one bucket at most
    assert -40_000e9 <= state.bit_tokens <= -40_000e9 + refilled, state.bit_tokens
    prog.test_run(original, ctx=SkBuff(ifindex=kernel_ns.k0, mark=abi.MIRROR_COPY_MARK))
    assert obj.map(abi.MAP_LINK_STATE).lookup(kernel_ns.k0, abi.LinkState).orig_bytes == 11_000


def test_a_links_copies_take_only_its_room_and_the_tighter_budget_wins(
    loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs
) -> None:
    """No room on the link: every copy shed, counted per link and per session; room: the copy budget still counts."""
    obj, tables = loaded
    data = {**CONFIG, "copy_budget": {"pps": 100}}  # a bucket of 10 copies
    tables.links = {kernel_ns.k0}  # as the agent does before it writes the sessions: they leave by a listed link
    cfg, _ = program(tables, kernel_ns, data)
    tables.set_budget(*cfg.copy_budget)
    ctx = xfer_ctx(tables, cfg.rules, 20)
    encap = obj.program(abi.PROG_ENCAP)
    gov = links(obj, kernel_ns, 0)  # originals fill it: nothing left for copies
    time.sleep(0.02)
    for _ in range(5):
        assert encap.test_run(INNER_V4, ctx=ctx).retval == TC_ACT_SHOT
    state = obj.map(abi.MAP_LINK_STATE).lookup(kernel_ns.k0, abi.LinkState)
    assert (state.copies, state.shed) == (0, 5)
    assert tables.session_stats("ids4").shed == 5 and tables.counters()["shed"] == 5
    assert gov.status()[0]["shed"] == 0, "status shows what the last tick read"
    gov.set_links([LinkState("k0", kernel_ns.k0, 10**11, 0.0)])  # room for everything: the budget decides
    time.sleep(0.01)
    start = time.monotonic()
    sent = sum(encap.test_run(INNER_V4, ctx=ctx).retval == TC_ACT_REDIRECT for _ in range(50))
    # the budget's 10 less the normal priority's reserve, and what accrues meanwhile (100 a second)
    assert 8 <= sent <= 10 + int(100 * (time.monotonic() - start)) + 1, sent
    state = obj.map(abi.MAP_LINK_STATE).lookup(kernel_ns.k0, abi.LinkState)
    assert state.copies == sent and state.bytes == sent * (50 + len(INNER_V4)) and state.shed == 5
