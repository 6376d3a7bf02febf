"""Tunnel codecs (bpftap.tunnels): header bytes against scapy's independent definitions, round trips,
each reject reason, and whole copies (outer headers, checksums, lengths)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.packet import Raw

from bpftap import abi
from bpftap.tunnels import (
    DECODERS,
    TUNNELS,
    DecapError,
    Meta,
    decode_gre,
    erspan,
    geneve,
    gre,
    raw,
    vxlan,
)
from bpftap.tunnels.outer import Outer, encapsulate, header_len

from ..abi_header import tunnels_missing

INNER = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.1", dst="198.18.3.1")
              / UDP(sport=1000, dport=7000) / Raw(b"payload"))
TAGGED = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=0x123, prio=6)
               / IP(src="198.18.1.1", dst="198.18.3.1") / UDP(sport=1000, dport=7000) / Raw(b"payload"))
T = 1_700_000_000_987_654_321


def test_geneve_matches_scapy() -> None:
    data = struct.pack("!BBHII", 1, 2, 0, 0x1234, 77)
    opt = GeneveOptions(classid=abi.GENEVE_OPT_CLASS_BPFTAP, type=abi.GENEVE_OPT_TYPE_SOURCE, length=3, data=data)
    want = bytes(GENEVE(version=0, optionlen=4, proto=0x6558, vni=0xABCDE, options=[opt]))
    assert geneve.encode(0xABCDE, INNER, direction=2, ifindex=0x1234, seq=77) == want + INNER


@pytest.mark.parametrize(("key", "seq"), [(None, None), (7, None), (None, 9), (0xFFFFFFFF, 0)])
def test_gre_matches_scapy(key: int | None, seq: int | None) -> None:
    want = GRE(proto=0x6558, key_present=key is not None, key=key, seqnum_present=seq is not None, seqence_number=seq)
    assert gre.encode(INNER, key=key, seq=seq) == bytes(want) + INNER


@pytest.mark.parametrize("inner", [INNER, TAGGED], ids=["untagged", "tagged"])
def test_erspan2_matches_scapy(inner: bytes) -> None:
    tagged = inner is TAGGED
    hdr = ERSPAN_II(ver=1, vlan=0x123 if tagged else 0, cos=6 if tagged else 0, en=3 if tagged else 0, t=0,
                    session_id=513, reserved=0, index=0x54321)
    want = bytes(GRE(proto=0x88BE, seqnum_present=1, seqence_number=12)) + bytes(hdr)[:8]
    assert erspan.encode2(513, inner, seq=12, ifindex=0x12354321) == want + inner


@pytest.mark.parametrize("direction", [1, 2])
def test_erspan3_matches_scapy(direction: int) -> None:
    hdr = ERSPAN_III(ver=2, vlan=0x123, cos=6, bso=0, t=0, session_id=1023, timestamp=T % 10**9, sgt_other=0,
                     p=1, ft=0, hw=0, d=direction == 2, gra=2, o=1)
    sub = ERSPAN_PlatformSpecific(platf_id=3, info1=0x1234 & 0x3FFF, info2=T // 10**9)
    want = bytes(GRE(proto=0x22EB, seqnum_present=1, seqence_number=5)) + bytes(hdr)[:12] + bytes(sub)[:8]
    assert erspan.encode3(1023, TAGGED, seq=5, direction=direction, ifindex=0x1234, timestamp_ns=T) == want + TAGGED


def test_erspan3_without_the_platform_subheader_as_linux_reads_it() -> None:
    """O clear and 12 header bytes: the time's nanoseconds only, no port (decoded without either)."""
    hdr = ERSPAN_III(ver=2, vlan=0x123, cos=6, bso=0, t=0, session_id=7, timestamp=T % 10**9, sgt_other=0,
                     p=1, ft=0, hw=0, d=1, gra=2, o=0)
    want = bytes(GRE(proto=0x22EB, seqnum_present=1, seqence_number=5)) + bytes(hdr)[:12]
    copy = erspan.encode3(7, TAGGED, seq=5, direction=2, ifindex=3, timestamp_ns=T, platform=False)
    assert copy == want + TAGGED
    meta, inner = erspan.decode3(copy)
    assert inner == TAGGED and (meta.ifindex, meta.timestamp_ns, meta.direction) == (None, None, 2)


def encoded(tunnel: str, inner: bytes = INNER) -> bytes:
    return {
        "vxlan": lambda: vxlan.encode(42, inner),
        "geneve": lambda: geneve.encode(42, inner, direction=1, ifindex=3, seq=4),
        "gre": lambda: gre.encode(inner, key=42, seq=4),
        "erspan2": lambda: erspan.encode2(42, inner, seq=4, ifindex=3),
        "erspan3": lambda: erspan.encode3(42, inner, seq=4, direction=1, ifindex=3, timestamp_ns=T),
    }[tunnel]()


ROUND_TRIPS = {
    "vxlan": Meta("vxlan", id=42),
    "geneve": Meta("geneve", id=42, seq=4, direction=1, ifindex=3),
    "gre": Meta("gre", id=42, seq=4),
    "erspan2": Meta("erspan2", id=42, seq=4, ifindex=3),
    "erspan3": Meta("erspan3", id=42, seq=4, direction=1, ifindex=3, timestamp_ns=T),
}


@pytest.mark.parametrize("tunnel", TUNNELS)
def test_round_trip(tunnel: str) -> None:
    assert DECODERS[tunnel](encoded(tunnel)) == (ROUND_TRIPS[tunnel], INNER)
    if tunnel in ("gre", "erspan2", "erspan3"):
        assert decode_gre(encoded(tunnel)) == (ROUND_TRIPS[tunnel], INNER)


def test_meta_describes_itself() -> None:
    meta = Meta("erspan3", id=7, seq=12, direction=2, ifindex=3, timestamp_ns=T, vlan=5)
    assert meta.describe() == "tunnel=erspan3 session=7 seq=12 dir=egress if=3 vlan=5 ts=1700000000.987654321"
    assert Meta("gre").describe() == "tunnel=gre"
    assert Meta("vxlan", id=1).describe() == "tunnel=vxlan vni=1"


def flip(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1:]


REJECTS: list[tuple[str, str, bytes, str]] = [
    ("geneve", "empty", b"", "short"),
    ("geneve", "version 1", flip(encoded("geneve"), 0, 0x44), "version"),
    ("geneve", "OAM", flip(encoded("geneve"), 1, 0x80), "oam"),
    ("geneve", "IPv4 payload", encoded("geneve")[:2] + b"\x08\x00" + encoded("geneve")[4:], "protocol"),
    ("geneve", "options past the end", encoded("geneve")[:20], "short"),
    ("geneve", "option longer than the options", flip(encoded("geneve"), 11, 4), "options"),
    ("geneve", "unknown critical option",
     encoded("geneve")[:8] + struct.pack("!HBB", 0x0102, 0x81, 3) + encoded("geneve")[12:], "critical"),
    ("geneve", "short inner frame", geneve.encode(1, INNER[:13]), "short"),
    ("gre", "empty", b"", "short"),
    ("gre", "version 1", flip(encoded("gre"), 1, 0x01), "version"),
    ("gre", "routing bit", flip(encoded("gre"), 0, 0x70), "flags"),
    ("gre", "key cut off", encoded("gre")[:6], "short"),
    ("gre", "bad checksum", b"\x80\x00\x65\x58\x00\x01\x00\x00" + INNER, "checksum"),
    ("gre", "ERSPAN is not plain GRE", encoded("erspan2"), "protocol"),
    ("gre", "short inner frame", gre.encode(INNER[:10]), "short"),
    ("erspan2", "type I", gre.header(erspan.PROTO_TYPE2) + INNER, "type1"),
    ("erspan2", "version 2 under 0x88BE", flip(encoded("erspan2"), 8, 0x20), "version"),
    ("erspan2", "cut header", encoded("erspan2")[:12], "short"),
    ("erspan2", "wrong protocol", encoded("erspan3"), "protocol"),
    ("erspan3", "version 1 under 0x22EB", flip(encoded("erspan3"), 8, 0x10), "version"),
    ("erspan3", "IP frame type", flip(encoded("erspan3"), 18, 0x88), "frame_type"),
    ("erspan3", "sub-header cut off", encoded("erspan3")[:24], "short"),
    ("erspan3", "short inner frame", erspan.encode3(1, INNER[:5], seq=1), "short"),
]


@pytest.mark.parametrize(("tunnel", "description", "data", "reason"), REJECTS, ids=[r[1] + "-" + r[0] for r in REJECTS])
def test_rejects(tunnel: str, description: str, data: bytes, reason: str) -> None:
    with pytest.raises(DecapError) as info:
        DECODERS[tunnel](data)
    assert info.value.reason == reason, description
    module: Any = {"geneve": geneve, "gre": gre, "erspan2": erspan, "erspan3": erspan}[tunnel]
    assert reason in module.REASONS


def test_gre_checksum_when_present_is_verified() -> None:
    body = b"\x80\x00\x65\x58\x00\x00\x00\x00" + INNER
    good = body[:4] + struct.pack("!H", gre.checksum(body)) + body[6:]
    assert gre.decode(good) == (Meta("gre"), INNER)


def test_geneve_skips_other_options_and_keeps_ours() -> None:
    other = struct.pack("!HBB", 0x0102, 0x01, 1) + b"abcd"
    data = geneve.encode(5, INNER, direction=2, ifindex=9, seq=3)
    data = bytes([data[0] + 2]) + data[1:8] + other + data[8:]
    assert geneve.decode(data) == (Meta("geneve", id=5, seq=3, direction=2, ifindex=9), INNER)


def test_decode_gre_dispatches_on_protocol() -> None:
    with pytest.raises(DecapError) as info:
        decode_gre(gre.header(0x0800) + INNER)
    assert (info.value.tunnel, info.value.reason) == ("gre", "protocol")


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x45" + b"\0" * 10, "short"),
    (b"\x65" + b"\0" * 19, "version"),
    (b"\x46\0\0\x14" + b"\0" * 16, "header"),
    (bytes(IP(src="198.18.2.1", dst="198.18.2.2", proto=17) / Raw(b"x" * 8)), "protocol"),
])
def test_raw_ipv4_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(DecapError) as info:
        raw.strip_ipv4(data)
    assert (info.value.tunnel, info.value.reason) == ("ip", reason)


def test_raw_ipv4_strips_options_and_padding() -> None:
    packet = bytes(IP(src="198.18.2.1", dst="198.18.2.2", proto=47, options=b"\x01\x01\x01\x00") / encoded("gre"))
    assert raw.strip_ipv4(packet + b"\0\0\0\0") == encoded("gre")


SRC_MAC, DST_MAC = b"\x02\0\0\0\0\x10", b"\x02\0\0\0\0\x11"
ADDRS = {4: ("198.18.2.254", "198.18.2.1"), 6: ("2001:db8:2::fe", "2001:db8:2::1")}


def outer(tunnel: str, family: int, **kw: Any) -> Outer:
    src, dst = (ipaddress.ip_address(a) for a in ADDRS[family])
    return Outer(tunnel, SRC_MAC, DST_MAC, src, dst, **kw)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("tunnel", TUNNELS)
def test_whole_copies_parse_with_right_checksums(tunnel: str, family: int) -> None:
    o = outer(tunnel, family, tun_id=42, dst_port=4789 if tunnel == "vxlan" else 6081, gre_key=True, gre_seq=True)
    copy = encapsulate(o, TAGGED, hash=0xABCDE, seq=3, direction=2, ifindex=4, timestamp_ns=T)
    assert len(copy) == o.header_len + len(TAGGED)
    frame = Ether(copy)
    if family == 4:
        assert (frame[IP].flags, frame[IP].id, frame[IP].ttl) == (2, 0, 64)
        assert gre.checksum(copy[14:34]) == 0, "IPv4 header checksum"
    else:
        assert (frame[IPv6].fl, frame[IPv6].hlim) == (0xABCDE, 64)
    if tunnel in ("vxlan", "geneve"):
        udp = frame[UDP]
        assert udp.sport == 49152 + (0xABCDE & 0x3FFF)
        if family == 4:
            assert udp.chksum == 0
        else:
            sent = udp.chksum
            del udp.chksum
            assert Ether(bytes(frame))[UDP].chksum == sent != 0, "IPv6 UDP checksum"
    assert copy.endswith(TAGGED)


def test_ipv4_header_checksum_is_right() -> None:
    copy = encapsulate(outer("gre", 4), INNER)
    assert gre.checksum(copy[14:34]) == 0


@pytest.mark.parametrize(("tunnel", "family", "kw", "length"), [
    ("vxlan", 4, {}, 50), ("vxlan", 6, {}, 70), ("geneve", 4, {}, 66), ("geneve", 6, {}, 86),
    ("gre", 4, {}, 38), ("gre", 4, {"key": True}, 42), ("gre", 6, {"key": True, "seq": True}, 66),
    ("erspan2", 4, {}, 50), ("erspan2", 6, {}, 70), ("erspan3", 4, {}, 62), ("erspan3", 6, {}, 82),
    ("erspan3", 4, {"platform": False}, 54),
])
def test_header_lengths(tunnel: str, family: int, kw: dict[str, bool], length: int) -> None:
    assert header_len(tunnel, family, **kw) == length
    assert length <= abi.MIRROR_HDR_MAX


def test_unknown_tunnel_or_family() -> None:
    with pytest.raises(ValueError):
        header_len("nvgre", 4)
    with pytest.raises(ValueError):
        header_len("gre", 5)
    with pytest.raises(ValueError):
        erspan.encode2(1024, INNER, seq=1)
    with pytest.raises(ValueError):
        geneve.encode(1 << 24, INNER)


def test_the_tunnel_registry_is_the_kernels_list() -> None:
    """One list of tunnel types (bpftap.tunnels.TYPES): the same names as enum mirror_tunnel, and every other list
    (config, collector) derived from it."""
    from bpftap import abi, tunnels
    from bpftap.collector import server
    from bpftap.config import model, validate

    assert [t.upper() for t in tunnels.TUNNELS] == [m.name for m in abi.MirrorTunnel]
    assert tunnels_missing(tunnels.TYPES) == ([], [])  # against enum mirror_tunnel in bpf/mirror_abi.h itself
    assert {t.name: t.kernel_code for t in tunnels.TYPES.values()} == {m.name.lower(): m for m in abi.MirrorTunnel}
    assert validate.TUNNELS is tunnels.TUNNELS and server.UDP_TUNNELS is tunnels.UDP_TUNNELS
    assert set(tunnels.UDP_TUNNELS) | set(tunnels.GRE_TUNNELS) == set(tunnels.TUNNELS)
    assert not set(tunnels.UDP_TUNNELS) & set(tunnels.GRE_TUNNELS)
    assert (model.VXLAN_PORT, model.GENEVE_PORT) == (4789, 6081)
