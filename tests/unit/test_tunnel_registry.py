"""Adding a tunnel type in one place (bpftap.tunnels.TYPES) makes config, builder, collector and ABI test see it.

A fake type, "fake" (GRE protocol type 0x88B5, the IEEE's local
experimental EtherType, with an optional key), is registered for the length
of a test with monkeypatch: nothing else is edited, and each consumer
finds it through the registry or a view derived from it (TUNNELS,
GRE_TUNNELS, GRE_PROTOCOLS, TUNNEL_ID_FIELDS, DECODERS), including the
modules that imported those names before the fake existed.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Raw

from bpftap import tunnels
from bpftap.collector import cli, server
from bpftap.collector.pcapng import read_pcapng
from bpftap.config import InvalidConfigError, Session, parse_config, validate
from bpftap.tunnels import TunnelType, gre, outer
from bpftap.tunnels.common import DecapError, Header, Meta

from ..abi_header import tunnels_missing

FAKE_PROTO = 0x88B5
INNER = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.1.1", dst="198.18.3.1")
              / UDP(sport=1000, dport=7000) / Raw(b"fake payload"))
V4 = ipaddress.ip_address("198.18.2.1")


def fake_encode(h: Header, inner: bytes) -> bytes:
    return gre.header(FAKE_PROTO, key=h.tun_id if h.key else None) + inner


def fake_decode(packet: bytes) -> tuple[Meta, bytes]:
    proto, key, seq, hlen = gre.parse(packet, "fake")
    if proto != FAKE_PROTO:
        raise DecapError("fake", "protocol", f"0x{proto:04x}")
    return Meta("fake", id=key, seq=seq), packet[hlen:]


FAKE = TunnelType("fake", "key", fake_decode, fake_encode, lambda h: 4 + 4 * h.key, gre_proto=FAKE_PROTO,
                  id_optional=True)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[TunnelType]:
    assert "fake" not in tunnels.TUNNELS
    monkeypatch.setitem(tunnels.TYPES, "fake", FAKE)
    yield FAKE


def test_every_view_follows_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    before = tuple(tunnels.TUNNELS)
    with monkeypatch.context() as m:
        m.setitem(tunnels.TYPES, "fake", FAKE)
        assert tuple(tunnels.TUNNELS) == (*before, "fake") and "fake" in tunnels.GRE_TUNNELS
        assert "fake" not in tunnels.UDP_TUNNELS and "fake" not in tunnels.UDP_PORTS
        assert tunnels.GRE_PROTOCOLS[FAKE_PROTO] == "fake" and tunnels.TUNNEL_ID_FIELDS["fake"] == "key"
        assert tunnels.DECODERS["fake"] is fake_decode
        # the same objects where they were imported by name
        assert validate.TUNNELS is tunnels.TUNNELS and "fake" in validate.TUNNELS
        assert server.GRE_TUNNELS is tunnels.GRE_TUNNELS and server.DECODERS["fake"] is fake_decode
    assert tuple(tunnels.TUNNELS) == before and "fake" not in tunnels.GRE_PROTOCOLS.values()
    with pytest.raises(TypeError):
        tunnels.TYPES.update(fake=FAKE)  # a change the views would not see


def test_config_accepts_it(fake: TunnelType) -> None:
    def parse(entry: dict[str, object]) -> tuple[Session, ...]:
        return parse_config({"sources": [{"interface": "eth0"}], "rules": [],
                             "sessions": [{"name": "s", "remote": "198.18.2.1", "tunnel": "fake", **entry}]},
                            "t.yaml").sessions

    assert parse({"key": 7}) == (Session("s", "fake", V4, port=0, key=7),)
    assert parse({}) == (Session("s", "fake", V4, port=0),)  # its registry entry says its key is optional, as gre's
    with pytest.raises(InvalidConfigError, match="only vxlan and geneve sessions have vni"):
        parse({"vni": 7})  # it is not carried over UDP: no vni, no port
    with pytest.raises(InvalidConfigError, match="unknown tunnel 'nope'; supported: vxlan, geneve, gre, erspan2, "
                                                 "erspan3, fake"):
        parse_config({"sessions": [{"name": "s", "remote": "198.18.2.1", "tunnel": "nope"}]}, "t.yaml")


def test_the_builder_builds_it(fake: TunnelType) -> None:
    o = outer.Outer("fake", b"\x02" * 6, b"\x04" * 6, ipaddress.ip_address("198.18.0.1"), V4, tun_id=7, gre_key=True)
    assert o.header_len == outer.header_len("fake", 4, key=True) == 14 + 20 + 8
    copy = Ether(outer.encapsulate(o, INNER, hash=5))
    assert copy[IP].proto == 47 and copy[IP].flags == "DF" and copy[IP].dst == "198.18.2.1"
    assert (copy[GRE].proto, copy[GRE].key_present, copy[GRE].key) == (FAKE_PROTO, 1, 7)
    assert bytes(copy[GRE].payload) == INNER
    assert len(bytes(copy)) == o.header_len + len(INNER)


def write_pcap(path: Path, frames: list[bytes]) -> None:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 10, i, len(f), len(f)) + f
    path.write_bytes(out)


def test_the_collector_decodes_it(fake: TunnelType, tmp_path: Path) -> None:
    """bpftap collect --read: the GRE socket/underlay path hands GRE packets to the registry's decoder."""
    o = outer.Outer("fake", b"\x02" * 6, b"\x04" * 6, ipaddress.ip_address("198.18.0.1"), V4, tun_id=9, gre_key=True)
    erspan = outer.Outer("erspan2", b"\x02" * 6, b"\x04" * 6, ipaddress.ip_address("198.18.0.1"), V4, tun_id=3)
    write_pcap(tmp_path / "in.pcap", [outer.encapsulate(o, INNER), outer.encapsulate(erspan, INNER, seq=1)])
    parser = argparse.ArgumentParser(prog="bpftap")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["collect", "--read", str(tmp_path / "in.pcap"), "--tunnel", "fake",
                              "--listen", "198.18.2.1:4789", "--out", str(tmp_path / "out.pcapng")])
    out, err = io.StringIO(), io.StringIO()
    assert cli.run_collect(args, stdout=out, stderr=err) == 0, err.getvalue()
    got = read_pcapng(tmp_path / "out.pcapng")
    assert [frame for _, frame, _ in got] == [INNER]  # the erspan2 copy is not a --tunnel asked for
    assert got[0][2].startswith("tunnel=fake ")


def test_the_abi_check_flags_it_as_missing_from_c(fake: TunnelType) -> None:
    assert tunnels_missing(tunnels.TYPES) == (["fake"], [])
    with pytest.raises(KeyError):
        fake.kernel_code  # noqa: B018 - the agent could not write its session: the kernel has no such type
