"""VXLAN codec (bpftap.tunnels.vxlan): exact header bytes, round trips, each malformed reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpftap.tunnels import vxlan
from bpftap.tunnels.common import DecapError, Meta
from bpftap.tunnels.vxlan import decode, encode
from bpftap.errors import BpftapError

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
        ("I flag plus G flag", b"\x88" + encode(1, INNER)[1:], "reserved"),
        ("reserved byte 1", encode(1, INNER)[:1] + b"\x01" + encode(1, INNER)[2:], "reserved"),
        ("reserved byte 3", encode(1, INNER)[:3] + b"\x01" + encode(1, INNER)[4:], "reserved"),
        ("reserved byte 7", encode(1, INNER)[:7] + b"\x01" + INNER, "reserved"),
        ("no I flag wins over reserved", b"\x00\xff" + encode(1, INNER)[2:], "flags"),
    ],
)
def test_malformed(description: str, datagram: bytes, reason: str) -> None:
    with pytest.raises(DecapError) as info:
        decode(datagram)
    assert info.value.reason == reason, description
    assert reason in vxlan.REASONS
    assert isinstance(info.value, BpftapError)
    assert str(info.value).startswith(f"vxlan decap: {reason}")


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_else(datagram: bytes) -> None:
    try:
        meta, inner = decode(datagram)
    except DecapError as exc:
        assert exc.reason in vxlan.REASONS
    else:
        assert meta.id is not None and encode(meta.id, inner) == datagram


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
    else:
        with pytest.raises(DecapError):
            decode(bytes(raw))
