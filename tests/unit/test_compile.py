"""The compile layer beyond the rule tables of test_rules.py: VLAN, TCP flag and interface classes against the
reference, trie keys and sizing, session records and snaplen policy, group flow buckets, stable ids."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpftap import abi
from bpftap.compile.classifier import AddrEntry, class_capacity, coarse_mask, compile_rules, match_compiled
from bpftap.compile.ids import StableIds, source_ids
from bpftap.compile.reference import PacketInfo, reference_match
from bpftap.compile.sessions import (
    group_buckets,
    member_name,
    rendezvous,
    session_flags,
    session_identity,
    session_record,
    session_snaplen,
)
from bpftap.compile.slots import assign_session_slots, session_header_len
from bpftap.config import Config, Direction, IPAddress, Rule, Session, Source, parse_config
from bpftap.config.fields import TCP_FLAGS, VLAN_UNTAGGED
from bpftap.errors import BpftapError

ip = ipaddress.ip_address
net = ipaddress.ip_network
ETH_HLEN = 14


# the small dimensions: compile + match picks the reference's rule

IFINDEX = {"k0": 3, "k1": 4, "eth9": 7}  # the source interfaces rules are compiled against
SYN, ACK, RST = TCP_FLAGS["syn"], TCP_FLAGS["ack"], TCP_FLAGS["rst"]


@st.composite
def small_dimension_rules(draw: st.DrawFn, number: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"number": number, "sessions": ["a"]}
    if draw(st.booleans()):
        rule["vlan"] = draw(st.sampled_from([0, 7, 100, 4095, "untagged"]))
    if draw(st.booleans()):
        rule["protocol"] = "tcp"
        if draw(st.booleans()):
            rule["tcp_flags"] = draw(st.sampled_from(["syn", "syn,!ack", "ack", "!syn,!rst", "fin,psh,urg"]))
    if draw(st.booleans()):
        rule["interface"] = draw(st.sampled_from(["k0", "k1", "k*", "eth?", "nothing"]))
    if draw(st.booleans()):
        rule["direction"] = draw(st.sampled_from(["ingress", "egress"]))
    return rule


@st.composite
def small_dimension_packets(draw: st.DrawFn) -> PacketInfo:
    proto = draw(st.sampled_from([6, 17]))
    flags = draw(st.integers(0, 255)) if proto == 6 else None
    return PacketInfo(
        draw(st.sampled_from([Direction.INGRESS, Direction.EGRESS])), 4, proto, ip("198.18.0.1"), ip("198.18.0.2"),
        1234, 80, vlan=draw(st.sampled_from([VLAN_UNTAGGED, 0, 7, 100, 4095])), tcp_flags=flags,
        ifname=draw(st.sampled_from(sorted(IFINDEX))),
    )


@settings(max_examples=150, deadline=None)
@given(numbers=st.lists(st.integers(1, 1000), min_size=1, max_size=8, unique=True), data=st.data(),
       pkts=st.lists(small_dimension_packets(), min_size=1, max_size=20))
def test_vlan_flag_and_interface_classes_match_like_the_reference(
    numbers: list[int], data: st.DataObject, pkts: list[PacketInfo]
) -> None:
    rules = [data.draw(small_dimension_rules(n)) for n in numbers]
    cfg = parse_config({"sources": [{"interface": "k*"}], "sessions": [{"name": "a", "remote": "198.18.2.1",
                                                                        "vni": 1}], "rules": rules}, "small.yaml")
    compiled = compile_rules(cfg, {"a": 0}, IFINDEX)
    for pkt in pkts:
        want = reference_match(cfg, pkt)
        got = match_compiled(compiled, pkt)
        assert (None if got is None else cfg.rules[got]) == want, pkt


def test_small_dimensions_by_example() -> None:
    tagged = Rule(1, vlan=100, sessions=("a",))
    untagged = Rule(2, vlan=VLAN_UNTAGGED, protocol=6, tcp_flags=(SYN | ACK, SYN), sessions=("a",))
    on_k1 = Rule(3, interface="k1", sessions=("a",))
    cfg = Config("t.yaml", (Source("k*"),), (Session("a", "vxlan", ip("198.18.2.1"), 1),), (tagged, untagged, on_k1))
    compiled = compile_rules(cfg, {"a": 0}, IFINDEX)

    def pkt(vlan: int = VLAN_UNTAGGED, flags: int | None = None, ifname: str | None = "k0") -> PacketInfo:
        return PacketInfo(Direction.INGRESS, 4, 6 if flags is not None else 17, ip("198.18.0.1"), ip("198.18.0.2"),
                          1, 2, vlan=vlan, tcp_flags=flags, ifname=ifname)

    cases = [
        (pkt(vlan=100), tagged),
        (pkt(flags=SYN), untagged),  # a SYN without ACK, untagged
        (pkt(flags=SYN | ACK), None),  # the flags do not match; k0 is not k1
        (pkt(flags=SYN | ACK, ifname="k1"), on_k1),
        (pkt(vlan=7, ifname="k1"), on_k1),
        (pkt(vlan=7, ifname=None), None),  # no interface: an interface rule cannot match
        (pkt(vlan=7, ifname="eth9"), None),
    ]
    for packet, want in cases:
        assert reference_match(cfg, packet) == want, packet
        got = match_compiled(compiled, packet)
        assert (None if got is None else cfg.rules[got]) == want, packet
    # an interface the rules were not compiled against is "any other interface": index 0
    assert compiled.iface[0] == compiled.iface[IFINDEX["eth9"]]
    assert compiled.tcp_flags[abi.NOT_TCP] != compiled.tcp_flags[SYN]


# the classifier's keys and sizes

def test_trie_keys_put_slot_dim_and_family_ahead_of_the_address() -> None:
    v4 = AddrEntry(abi.MirrorDim.DST, net("198.18.1.0/24"), 5).key(1)
    assert (v4.prefixlen, v4.slot, v4.dim, v4.family) == (32 + 24, 1, abi.MirrorDim.DST, 4)
    assert bytes(v4.addr) == bytes([198, 18, 1, 0]) + bytes(12)
    v6 = AddrEntry(abi.MirrorDim.SRC, net("2001:db8::/32"), 0).key(0)
    assert (v6.prefixlen, v6.slot, v6.dim, v6.family) == (64, 0, abi.MirrorDim.SRC, 6)
    assert bytes(v6.addr) == ip("2001:db8::").packed


def test_class_capacity_leaves_room_to_double() -> None:
    assert class_capacity(0) == abi.CLASS_CAPACITY
    assert class_capacity(abi.CLASS_CAPACITY // 2) == abi.CLASS_CAPACITY
    assert class_capacity(abi.CLASS_CAPACITY // 2 + 1) == 2 * abi.CLASS_CAPACITY
    assert class_capacity(3 * abi.CLASS_CAPACITY) == 8 * abi.CLASS_CAPACITY


def test_coarse_mask_has_a_bit_per_block_of_rule_positions() -> None:
    block = abi.COARSE_RULES
    assert [coarse_mask(0), coarse_mask(1), coarse_mask(1 << (block - 1)), coarse_mask(1 << block)] == [0, 1, 1, 2]
    assert coarse_mask((1 << 3) | (1 << (5 * block + 7)) | (1 << (abi.MAX_RULES - 1))) == 1 | 1 << 5 | 1 << 31


def test_words_count_the_bitmap_words_in_use() -> None:
    def words(n: int) -> int:
        cfg = Config("t.yaml", (Source("eth0"),), (), tuple(Rule(i + 1) for i in range(n)))
        return compile_rules(cfg, {}).words

    assert [words(0), words(1), words(64), words(65)] == [0, 1, 1, 2]


def test_more_rules_than_the_maps_hold_is_an_error() -> None:
    cfg = Config("t.yaml", (Source("eth0"),), (), tuple(Rule(i + 1) for i in range(abi.MAX_RULES + 1)))
    with pytest.raises(ValueError, match=f"at most {abi.MAX_RULES} fit"):
        compile_rules(cfg, {})


def test_slots_refuse_a_repeated_name() -> None:
    twice = [Session("a", "vxlan", ip("198.18.2.1"), 1), Session("a", "vxlan", ip("198.18.2.2"), 2)]
    with pytest.raises(ValueError, match="repeat"):
        assign_session_slots(twice)


# session records

@dataclass(frozen=True)
class FakeHop:
    """A next hop as bpftap.netlink.NextHop carries it (compile.sessions.Hop)."""

    ifindex: int
    src: IPAddress
    src_mac: bytes
    dst_mac: bytes
    mtu: int


HOP = FakeHop(9, ip("198.18.1.1"), b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02", 1500)


def test_a_session_record_carries_the_session_and_its_next_hop() -> None:
    s = Session("ids", "geneve", ip("198.18.2.2"), 42, port=6081, sample=10, rate_limit=(100, 8000),
                priority="high", oversize="fragment")
    rec = session_record(s, HOP, stats_id=7)
    assert (rec.tun_id, rec.dst_port, rec.hdr_len, rec.family) == (42, 6081, session_header_len(s), 4)
    assert (rec.tunnel, rec.flags, rec.stats_id, rec.sample) == (abi.MirrorTunnel.GENEVE, 0, 7, 10)
    assert (rec.rate_pps, rec.rate_bps, rec.group_size, rec.snaplen) == (100, 8000, 1, 0)
    assert rec.priority == abi.MirrorPriority.HIGH
    assert abi.get_addr(rec.outer_dst, 4) == ip("198.18.2.2").packed
    assert abi.get_addr(rec.outer_src, 4) == HOP.src.packed
    assert (bytes(rec.src_mac), bytes(rec.dst_mac), rec.ifindex, rec.mtu) == (HOP.src_mac, HOP.dst_mac, 9, 1500)


def test_without_a_next_hop_the_record_has_no_way_out() -> None:
    rec = session_record(Session("ids", "vxlan", ip("2001:db8::2"), 1), None, stats_id=0)
    assert (rec.ifindex, rec.mtu, rec.family) == (0, 0, 6)
    assert bytes(rec.outer_src) == bytes(16) and bytes(rec.src_mac) == bytes(6)
    assert abi.get_addr(rec.outer_dst, 6) == ip("2001:db8::2").packed


def test_the_mtu_field_holds_at_most_16_bits() -> None:
    rec = session_record(Session("ids", "vxlan", ip("198.18.2.2"), 1), FakeHop(**{**HOP.__dict__, "mtu": 70000}), 0)
    assert rec.mtu == 0xFFFF


def test_session_flags() -> None:
    gre = Session("g", "gre", ip("198.18.2.2"), key=5)
    assert session_flags(gre) == abi.MIRROR_SF_KEY | abi.MIRROR_SF_SEQ | abi.MIRROR_SF_RESEGMENT
    plain = Session("p", "gre", ip("198.18.2.2"), sequence=False, oversize="truncate")
    assert session_flags(plain) == 0
    assert session_flags(plain, on_link=True) == abi.MIRROR_SF_LINK
    e3 = Session("e", "erspan3", ip("198.18.2.2"), session_id=1, oversize="fragment")
    assert session_flags(e3) == abi.MIRROR_SF_PLATFORM
    e3_bare = Session("e", "erspan3", ip("198.18.2.2"), session_id=1, oversize="fragment", platform_subheader=False)
    assert session_flags(e3_bare) == 0


def test_a_truncating_session_cuts_copies_to_fit_the_egress_mtu() -> None:
    def snap(snaplen: int, oversize: str, mtu: int | None) -> int:
        s = Session("s", "vxlan", ip("198.18.2.2"), 1, snaplen=snaplen, oversize=oversize)
        return session_snaplen(s, None if mtu is None else FakeHop(**{**HOP.__dict__, "mtu": mtu}))

    outer = session_header_len(Session("s", "vxlan", ip("198.18.2.2"), 1)) - ETH_HLEN  # IP + UDP + VXLAN
    assert snap(0, "truncate", 1500) == 1500 - outer
    assert snap(200, "truncate", 1500) == 200
    assert snap(9000, "truncate", 1500) == 1500 - outer
    assert snap(0, "truncate", 40) == ETH_HLEN  # never less than the inner Ethernet header
    assert snap(0, "truncate", None) == 0  # no next hop yet: nothing to fit
    assert snap(300, "resegment", 1500) == 300
    assert snap(0, "fragment", 576) == 0
    s = Session("s", "vxlan", ip("198.18.2.2"), 1, oversize="truncate")
    assert session_record(s, HOP, 0).snaplen == 1500 - outer


def test_group_members_have_names_identities_and_records_of_their_own() -> None:
    members = (ip("198.18.2.1"), ip("198.18.2.2"), ip("198.18.2.3"))
    group = Session("lb", "vxlan", members[0], 9, remotes=members)
    single = Session("one", "gre", ip("198.18.2.9"), key=3)
    assert [member_name(group, m) for m in range(3)] == ["lb@198.18.2.1", "lb@198.18.2.2", "lb@198.18.2.3"]
    assert member_name(single, 0) == "one"
    assert session_identity(group, 1) == ("lb@198.18.2.2", "vxlan", members[1], 9)
    assert session_identity(single) == ("one", "gre", ip("198.18.2.9"), 3)
    rec = session_record(group, HOP, stats_id=4, member=2)
    assert abi.get_addr(rec.outer_dst, 4) == members[2].packed and rec.group_size == 3


def test_group_buckets_spread_flows_over_every_member() -> None:
    members = (ip("198.18.2.1"), ip("198.18.2.2"), ip("198.18.2.3"))
    buckets = group_buckets(Session("lb", "vxlan", members[0], 9, remotes=members))
    assert len(buckets) == abi.GROUP_BUCKETS and sorted(set(buckets)) == [0, 1, 2]
    assert buckets == rendezvous(members, abi.GROUP_BUCKETS)  # the same on every run and every node


# stable ids

def test_stable_ids_are_reused_only_after_their_holder_goes() -> None:
    ids: StableIds[str] = StableIds(limit=3)
    assert [ids.get("a"), ids.get("b"), ids.get("a")] == [(0, True), (1, True), (0, False)]
    ids.keep_only({"b"})
    assert ids.get("c") == (0, True)  # a's id, freed
    assert ids.get("d") == (2, True)
    with pytest.raises(BpftapError, match="more than 3 counter ids"):
        ids.get("e")


def test_source_ids_keep_their_number_and_new_interfaces_take_the_lowest_free() -> None:
    first = source_ids([10, 11, 12], {})
    assert first == {10: 1, 11: 2, 12: 3}
    # 11 goes, 13 comes: 10 and 12 keep theirs, 13 takes 2
    assert source_ids([13, 12, 10], first) == {12: 3, 10: 1, 13: 2}
    # ids run out at MAX_SOURCES - 1: later interfaces get none
    many = source_ids(list(range(100, 100 + abi.MAX_SOURCES + 5)), {})
    assert sorted(many.values()) == list(range(1, abi.MAX_SOURCES))
    assert 100 + abi.MAX_SOURCES - 1 not in many
