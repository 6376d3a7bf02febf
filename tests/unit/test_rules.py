"""Rules compiler: session slots, compiled field values, and compile+match == reference."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpftap import abi
from bpftap.compile.classifier import compile_rules, match_compiled, rule_bits
from bpftap.compile.reference import PacketInfo, reference_match
from bpftap.compile.slots import assign_session_slots
from bpftap.config import Action, Config, Direction, Rule, Session, Source, parse_config

ip = ipaddress.ip_address
net = ipaddress.ip_network


def session(name: str, remote: str) -> Session:
    return Session(name, "vxlan", ip(remote), 1)


def config(*rules: Rule, sessions: tuple[Session, ...] = ()) -> Config:
    return Config("test.yaml", (Source("eth0"),), sessions, tuple(sorted(rules, key=lambda r: r.number)))


def test_slots_put_ipv4_first_and_keep_config_order() -> None:
    sessions = [
        session("a6", "2001:db8::1"),
        session("b4", "198.18.2.1"),
        session("c6", "2001:db8::2"),
        session("d4", "198.18.2.2"),
    ]
    assert assign_session_slots(sessions) == {"b4": 0, "d4": 1, "a6": 2, "c6": 3}


def test_slots_refuse_more_than_the_map_holds() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        assign_session_slots([session(f"s{i}", "198.18.2.1") for i in range(abi.MAX_SESSIONS + 1)])


def test_rules_compile_in_number_order_with_actions_and_session_masks() -> None:
    cfg = config(Rule(30, sessions=("s",)), Rule(10, action=Action.SKIP), Rule(20, sessions=("s", "t")))
    compiled = compile_rules(cfg, {"s": 3, "t": 0})
    assert [r.number for r in compiled.rules] == [10, 20, 30]
    skip, mirror = abi.MirrorAction.SKIP, abi.MirrorAction.MIRROR
    assert [r.action for r in compiled.rules] == [skip, mirror, mirror]
    assert [r.sessions for r in compiled.rules] == [0, 0b1001, 0b1000]


def test_session_without_slot_is_an_error() -> None:
    with pytest.raises(ValueError, match="session 'ghost' has no slot"):
        compile_rules(config(Rule(5, sessions=("ghost",))), {})


def test_address_classes_nest_and_cover_both_families() -> None:
    wide = Rule(1, src=net("198.18.0.0/15"), sessions=("s",))
    narrow = Rule(2, src=net("198.18.1.0/24"), sessions=("s",))
    anywhere = Rule(3, sessions=("s",))
    compiled = compile_rules(config(wide, narrow, anywhere), {"s": 0})
    src = {(e.network): compiled.classes[e.class_id] for e in compiled.addr if e.dim == abi.MirrorDim.SRC}
    assert src == {
        net("0.0.0.0/0"): 0b100,
        net("::/0"): 0b100,
        net("198.18.0.0/15"): 0b101,
        net("198.18.1.0/24"): 0b111,
    }
    # identical rule sets share one class
    assert len(compiled.classes) == len(set(compiled.classes))


def test_port_intervals_and_the_no_ports_class() -> None:
    dns = Rule(1, protocol=17, dst_ports=((53, 53),), sessions=("s",))
    high = Rule(2, protocol=17, dst_ports=((1024, 65535),), sessions=("s",))
    anyport = Rule(3, protocol=17, sessions=("s",))
    compiled = compile_rules(config(dns, high, anyport), {"s": 0})
    dport = [compiled.classes[c] for c in compiled.ports[abi.MirrorDim.DPORT]]
    assert (dport[52], dport[53], dport[54], dport[1023], dport[1024], dport[65535]) == (
        0b100, 0b101, 0b100, 0b100, 0b110, 0b110,
    )
    assert dport[abi.NO_PORTS] == 0b100


def test_rule_bits_layout() -> None:
    bits = rule_bits((1 << 0) | (1 << 64 * 5 + 3) | (1 << 64 * 70), words=71)
    assert (bits.words[0], bits.words[5], bits.words[70]) == (1, 8, 1)
    assert (bits.summary[0], bits.summary[1]) == ((1 << 0) | (1 << 5), 1 << 6)


def test_ten_thousand_rules_compile_quickly() -> None:
    rules = [
        Rule(i + 1, protocol=17, src=net(f"198.18.{i // 256 % 256}.{i % 256}/32"),
             dst_ports=((i % 5000, i % 5000 + 10),), sessions=("s",))
        for i in range(10_000)
    ]
    start = time.monotonic()
    compiled = compile_rules(config(*rules), {"s": 0})
    assert time.monotonic() - start < 20
    pkt = PacketInfo(Direction.INGRESS, 4, 17, ip("198.18.39.15"), ip("198.18.3.1"), 9, 4999)
    assert match_compiled(compiled, pkt) == 9999


def packet(
    direction: Direction = Direction.INGRESS,
    *,
    src: str,
    dst: str,
    proto: int = 17,
    sport: int | None = None,
    dport: int | None = None,
) -> PacketInfo:
    s, d = ip(src), ip(dst)
    return PacketInfo(direction, s.version, proto, s, d, sport, dport)


def test_reference_semantics_by_example() -> None:
    ports = Rule(10, protocol=17, dst_ports=((53, 53),), sessions=("s",))
    catch_all = Rule(20, Direction.EGRESS, sessions=("s",))
    cfg = config(ports, catch_all)
    compiled = compile_rules(cfg, {"s": 0})
    cases = [
        (packet(src="198.18.0.1", dst="198.18.0.2", sport=5000, dport=53), ports),
        (packet(src="2001:db8::1", dst="2001:db8::2", sport=5000, dport=53), ports),
        # a later fragment carries no ports: only rules with any ports can match
        (packet(src="198.18.0.1", dst="198.18.0.2"), None),
        (packet(Direction.EGRESS, src="198.18.0.1", dst="198.18.0.2"), catch_all),
        (PacketInfo(Direction.EGRESS, 0, 0, None, None), None),  # not IP: never matches
    ]
    for pkt, want in cases:
        assert reference_match(cfg, pkt) == want, pkt
        got = match_compiled(compiled, pkt)
        assert (None if got is None else cfg.rules[got]) == want, pkt


# property: compile_rules + match_compiled picks the same rule as reference_match

V4_HOSTS = [ip("198.18.0.0") + k for k in (0, 1, 2, 3, 5, 8, 255, 256)] + [ip("198.19.0.1")]
V6_HOSTS = [ip("2001:db8::") + k for k in (0, 1, 2, 3, 5, 8, 256)] + [ip("2001:db8:1::1")]
PREFIXES = {4: [15, 16, 24, 29, 30, 31, 32], 6: [32, 48, 64, 120, 125, 127, 128]}
PORTS = [0, 1, 52, 53, 54, 1023, 1024, 65534, 65535]
SESSIONS = [
    {"name": "a", "remote": "198.18.2.1", "vni": 1},
    {"name": "b", "remote": "2001:db8::2", "vni": 2},
    {"name": "c", "remote": "198.18.2.3", "vni": 3},
]


def cidrs(family: int) -> st.SearchStrategy[str]:
    hosts = V4_HOSTS if family == 4 else V6_HOSTS
    exact = st.builds(
        lambda h, p: str(net((h, p), strict=False)), st.sampled_from(hosts), st.sampled_from(PREFIXES[family])
    )
    return st.one_of(st.just("any"), exact)


port_specs = st.one_of(
    st.just("any"),
    st.sampled_from(PORTS),
    st.lists(st.sampled_from(PORTS), min_size=2, max_size=2).map(lambda p: f"{min(p)}-{max(p)}"),
    # port lists: ports and ranges, overlapping, adjacent or apart
    st.lists(st.one_of(st.sampled_from(PORTS), st.lists(st.sampled_from(PORTS), min_size=2, max_size=2).map(
        lambda p: f"{min(p)}-{max(p)}")), min_size=1, max_size=4),
)


@st.composite
def rule_dicts(draw: st.DrawFn, number: int) -> dict[str, Any]:
    family = draw(st.sampled_from([None, 4, 6]))
    protocols: list[Any] = ["any", "tcp", "udp", "sctp", 47]
    protocols += ["icmp"] * (family != 6) + ["icmpv6"] * (family != 4)
    rule: dict[str, Any] = {
        "number": number,
        "direction": draw(st.sampled_from(["ingress", "egress", "both"])),
        "protocol": draw(st.sampled_from(protocols)),
    }
    if family is not None:
        rule["src"], rule["dst"] = draw(cidrs(family)), draw(cidrs(family))
    if rule["protocol"] in ("any", "tcp", "udp", "sctp"):
        rule["src_ports"], rule["dst_ports"] = draw(port_specs), draw(port_specs)
    if draw(st.booleans()):
        rule["sessions"] = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    else:
        rule["action"] = "skip"
    return rule


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    numbers = draw(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=8, unique=True))
    rules = [draw(rule_dicts(n)) for n in numbers]
    return {"sources": [{"interface": "eth0"}], "sessions": SESSIONS, "rules": rules}


@st.composite
def packets(draw: st.DrawFn) -> PacketInfo:
    family = draw(st.sampled_from([4, 6]))
    hosts = V4_HOSTS if family == 4 else V6_HOSTS
    proto = draw(st.sampled_from([1, 6, 17, 47, 58, 132]))
    # TCP/UDP/SCTP carry ports unless the packet is a later fragment
    has_ports = proto in (6, 17, 132) and draw(st.sampled_from([True, True, True, False]))
    sport, dport = (draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))) if has_ports else (None, None)
    direction = draw(st.sampled_from([Direction.INGRESS, Direction.EGRESS]))
    return PacketInfo(
        direction, family, proto, draw(st.sampled_from(hosts)), draw(st.sampled_from(hosts)), sport, dport
    )


@settings(max_examples=200, deadline=None)
@given(data=configs(), pkts=st.lists(packets(), min_size=1, max_size=25))
def test_compiled_rules_match_like_the_reference(data: dict[str, Any], pkts: list[PacketInfo]) -> None:
    cfg = parse_config(data, "generated.yaml")  # every generated config must also be valid
    compiled = compile_rules(cfg, assign_session_slots(cfg.sessions))
    for pkt in pkts:
        want = reference_match(cfg, pkt)
        got = match_compiled(compiled, pkt)
        assert (None if got is None else cfg.rules[got]) == want, pkt
        if got is not None:
            assert compiled.rules[got].number == cfg.rules[got].number


def test_rendezvous_moves_only_the_removed_collectors_buckets() -> None:
    from bpftap.compile.sessions import rendezvous

    three = rendezvous(("198.18.2.1", "198.18.2.2", "198.18.2.3"), 256)
    two = rendezvous(("198.18.2.1", "198.18.2.3"), 256)
    assert sorted(set(three)) == [0, 1, 2]
    assert all(abs(three.count(i) - 256 / 3) < 0.25 * 256 / 3 for i in range(3)), [three.count(i) for i in range(3)]
    names3, names2 = ("a", "b", "c"), ("a", "c")
    for b in range(256):
        if names3[three[b]] != "b":
            assert names2[two[b]] == names3[three[b]], b


def test_group_members_take_consecutive_slots() -> None:
    group = Session("g", "vxlan", ip("198.18.2.1"), 1, remotes=(ip("198.18.2.1"), ip("198.18.2.2"), ip("198.18.2.3")))
    single = Session("s", "vxlan", ip("198.18.2.9"), 2)
    assert assign_session_slots([group, single]) == {"g": 0, "s": 3}


def test_counter_ids_taken_over_from_an_earlier_agent_leave_the_gaps_free() -> None:
    from bpftap.compile.ids import StableIds

    ids: StableIds[str] = StableIds(limit=8)
    ids.restore({"a": 0, "c": 3})
    assert ids.get("a") == (0, False)
    assert {ids.get("x")[0], ids.get("y")[0]} == {1, 2}
    assert ids.get("z") == (4, True)


def test_gso_sessions_are_the_ones_whose_segments_may_share_a_header() -> None:
    """VXLAN, GENEVE and GRE without sequence numbers; not ERSPAN, GRE with them, snaplen, sampling, rate limits."""
    ok = [Session("vx", "vxlan", ip("198.18.2.1"), 1), Session("gn", "geneve", ip("2001:db8::1"), 2, port=6081),
          Session("gr", "gre", ip("198.18.2.1"), sequence=False)]
    per_packet = [Session("grs", "gre", ip("198.18.2.1")), Session("e2", "erspan2", ip("198.18.2.1"), session_id=1),
                  Session("e3", "erspan3", ip("198.18.2.1"), session_id=1),
                  Session("cut", "vxlan", ip("198.18.2.1"), 1, snaplen=128),
                  Session("fit", "vxlan", ip("198.18.2.1"), 1, oversize="truncate"),
                  Session("one", "vxlan", ip("198.18.2.1"), 1, sample=10),
                  Session("slow", "vxlan", ip("198.18.2.1"), 1, rate_limit=(100, 0)),
                  Session("off", "vxlan", ip("198.18.2.1"), 1, gso=False)]
    assert [s.gso_capable for s in ok] == [True] * len(ok)
    assert [s.name for s in per_packet if s.gso_capable] == []
    everything = ok + per_packet
    slots = {s.name: i for i, s in enumerate(everything)}
    cfg = config(Rule(1, sessions=tuple(slots)), sessions=tuple(everything))
    [rule] = compile_rules(cfg, slots).rules
    assert rule.gso_sessions == 0b111
    assert rule.snap_sessions == (1 << slots["cut"]) | (1 << slots["fit"])


def test_the_last_session_slot_has_no_clone_of_its_own() -> None:
    """A clone's pass number has 6 bits: slot 63 stays with the whole-frame clone."""
    s = session("last", "198.18.2.1")
    [rule] = compile_rules(config(Rule(1, sessions=("last",)), sessions=(s,)), {"last": abi.MAX_SESSIONS - 1}).rules
    assert rule.gso_sessions == 0 and rule.sessions == 1 << (abi.MAX_SESSIONS - 1)
