"""VXLAN codec (bpftap.tunnels.vxlan): exact header bytes, round trips, each malformed reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpftap.errors import BpftapError
from bpftap.tunnels import vxlan
from bpftap.tunnels.common import DecapError, Meta
from bpftap.tunnels.vxlan import decode, encode

INNER = bytes(range(14)) + b"payload"


def test_header_bytes_match_rfc7348() -> None:
    assert encode(42, INNER) == bytes.fromhex("08000000 00002a00") + INNER
    assert encode(0xABCDEF, b"")[:8] == bytes.fromhex("08000000 abcdef00")


def test_header_matches_scapy() -> None:
    from scapy.layers.vxlan import VXLAN

    assert encode(4242, INNER) == bytes(VXLAN(flags=0x08, vni=4242)) + INNER


@pytest.mark.parametrize("vni", [0, 1, 42, 0x123456, vxlan.VNI_MAX])
def test_round_trip(vni: int) -> None:
    assert decode(encode(vni, INNER)) == (Meta("vxlan", id=vni), INNER)


@pytest.mark.parametrize("vni", [-1, vxlan.VNI_MAX + 1])
def test_encode_rejects_out_of_range_vni(vni: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(vni, INNER)


@pytest.mark.parametrize(
    ("description", "datagram", "reason"),
    [
        ("empty", b"", "short"),
        ("7-byte header", encode(1, b"")[:7], "short"),
        ("header only", encode(1, b""), "short"),
        ("13-byte inner frame", encode(1, INNER[:13]), "short"),
        ("no flags", b"\x00" + encode(1, INNER)[1:], "flags"),
        ("only a reserved flag", b"\x80" + encode(1, INNER)[1:], "flags"),
        ("no I flag, reserved bits set", b"\x00\xff" + encode(1, INNER)[2:], "flags"),
        ("G flag without I", b"\x80" + encode(1, INNER)[1:], "flags"),
    ],
)
def test_malformed(description: str, datagram: bytes, reason: str) -> None:
    with pytest.raises(DecapError) as info:
        decode(datagram)
    assert info.value.reason == reason, description
    assert reason in vxlan.REASONS
    assert isinstance(info.value, BpftapError)
    assert str(info.value).startswith(f"vxlan decap: {reason}")


@pytest.mark.parametrize(
    ("description", "header", "meta"),
    [
        ("every reserved bit set (G aside)", "7fffffff 00002aff", Meta("vxlan", id=42)),
        ("every bit set", "ffffffff 00002aff", Meta("vxlan", id=42, group=0xFFFF)),
        ("reserved byte 1", "08010000 00002a00", Meta("vxlan", id=42)),
        ("reserved byte 7", "08000000 00002a01", Meta("vxlan", id=42)),
        # Linux and Cilium with group policy: G and I, group 0x1234 in bytes 2-3
        ("GBP", "88001234 00002a00", Meta("vxlan", id=42, group=0x1234)),
        ("GBP, D and A bits", "88481234 00002a00", Meta("vxlan", id=42, group=0x1234)),
    ],
)
def test_reserved_bits_and_gbp_are_accepted(description: str, header: str, meta: Meta) -> None:
    """RFC 7348 5.: reserved bits MUST be ignored on receipt; only the I flag matters."""
    assert decode(bytes.fromhex(header) + INNER) == (meta, INNER), description
    if meta.group is not None:
        assert meta.describe() == f"tunnel=vxlan vni=42 gbp={meta.group}"


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_else(datagram: bytes) -> None:
    try:
        meta, inner = decode(datagram)
    except DecapError as exc:
        assert exc.reason in vxlan.REASONS
    else:
        assert meta.id is not None
        assert datagram[0] & vxlan.FLAG_I and datagram[4:7] == meta.id.to_bytes(3, "big") and datagram[8:] == inner


@given(st.integers(0, vxlan.VNI_MAX), st.binary(min_size=14, max_size=256))
def test_round_trip_fuzz(vni: int, inner: bytes) -> None:
    assert decode(encode(vni, inner)) == (Meta("vxlan", id=vni), inner)


@given(st.integers(0, vxlan.VNI_MAX), st.binary(min_size=14, max_size=32),
       st.integers(0, 7), st.integers(0, 7))
def test_any_single_bit_flip_in_header_is_caught_or_changes_vni(
    vni: int, inner: bytes, byte: int, bit: int
) -> None:
    raw = bytearray(encode(vni, inner))
    raw[byte] ^= 1 << bit
    if 4 <= byte <= 6:
        assert decode(bytes(raw))[0].id != vni
    elif byte == 0 and 1 << bit == vxlan.FLAG_I:
        with pytest.raises(DecapError):
            decode(bytes(raw))
    else:  # a reserved bit: ignored (RFC 7348)
        assert decode(bytes(raw))[0].id == vni
