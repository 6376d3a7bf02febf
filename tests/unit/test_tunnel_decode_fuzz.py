"""Fuzzing the collector's decoders: 100,000 inputs each, nothing raised but their own counted rejects.

A seeded mutation loop, not hypothesis (which manages a few hundred inputs
a second): a third of the inputs are random bytes, the rest are valid
frames of every type and option with bits flipped, bytes overwritten,
cut short, lengthened or spliced with another type's header. The same
seed gives the same inputs, so a failure reproduces; its input is printed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from bpftap.tunnels import DecapError, Meta, decode_gre, erspan, geneve, gre, raw, vxlan
from bpftap.tunnels.common import ETH_HLEN

N = 100_000
SEED = 0xB7A9
INNERS = [bytes(range(14)), bytes(range(60)), b"\x02" * 12 + b"\x81\x00\x00\x07\x08\x00" + b"\x45" * 40]


def ipv4(payload: bytes) -> bytes:
    total = 20 + len(payload)
    return bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0x40, 0, 64, 47, 0, 0]) + bytes(8) + payload


SEEDS: list[bytes] = [
    *(vxlan.encode(v, i) for v in (0, 42) for i in INNERS),
    *(geneve.encode(v, i, direction=d, ifindex=7, seq=s) for v in (1, 0xFFFFFF) for i in INNERS
      for d, s in ((1, 1), (2, 0xFFFFFFFF))),
    *(gre.encode(i, key=k, seq=s) for i in INNERS for k in (None, 5) for s in (None, 9)),
    *(erspan.encode2(sid, i, seq=3, ifindex=4) for sid in (0, 1023) for i in INNERS),
    *(erspan.encode3(sid, i, seq=3, direction=2, ifindex=4, timestamp_ns=1 << 62) for sid in (0, 1023)
      for i in INNERS),
]


def inputs(rng: random.Random, seeds: list[bytes]) -> list[bytes]:
    """N inputs: random bytes, or a mutated seed."""
    out: list[bytes] = []
    for _ in range(N):
        kind = rng.randrange(9)
        if kind < 3:
            out.append(rng.randbytes(rng.randrange(0, 80)))
            continue
        data = bytearray(rng.choice(seeds))
        if kind < 5 and data:  # flip bits, mostly in the headers
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(min(len(data), 48))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == 5 and data:  # overwrite a byte with a boundary value
            data[rng.randrange(min(len(data), 48))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif kind == 6:  # cut short
            del data[rng.randrange(len(data) + 1):]
        elif kind == 7:  # lengthen
            data += rng.randbytes(rng.randrange(1, 16))
        else:  # splice another seed's header onto this body
            other = rng.choice(seeds)
            cut = rng.randrange(min(len(other), 40) + 1)
            data = bytearray(other[:cut]) + data[cut:]
        out.append(bytes(data))
    return out


DECODERS: dict[str, tuple[Callable[[bytes], tuple[Meta, bytes]], tuple[str, ...], bool]] = {
    # name: (decoder, reasons it may give, inputs wrapped in an IPv4 header)
    "vxlan": (vxlan.decode, vxlan.REASONS, False),
    "geneve": (geneve.decode, geneve.REASONS, False),
    "gre": (gre.decode, gre.REASONS, False),
    "erspan2": (erspan.decode2, erspan.REASONS, False),
    "erspan3": (erspan.decode3, erspan.REASONS, False),
    "any gre": (decode_gre, erspan.REASONS, False),
    "raw ipv4": (lambda d: decode_gre(raw.strip_ipv4(d)), (*erspan.REASONS, *raw.REASONS), True),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_survives_100k_inputs(name: str) -> None:
    decode, reasons, wrap = DECODERS[name]
    rng = random.Random(f"{SEED}-{name}")
    seeds = [ipv4(s) for s in SEEDS] if wrap else SEEDS
    if wrap:  # mutate the IPv4 header too
        seeds += [s[:9] + b"\x11" + s[10:] for s in seeds[:4]] + [b"\x46" + s[1:] for s in seeds[:4]]
    outcomes: Counter[str] = Counter()
    for data in inputs(rng, seeds):
        try:
            meta, inner = decode(data)
        except DecapError as exc:
            assert exc.reason in reasons, f"{name}: unknown reason {exc.reason!r} for {data.hex()}"
            outcomes[exc.reason] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name}: {type(exc).__name__}: {exc} for input {data.hex()}")
        else:
            assert isinstance(meta, Meta) and len(inner) >= ETH_HLEN, data.hex()
            outcomes["accepted"] += 1
    assert sum(outcomes.values()) == N
    # the mutations reach both sides: frames accepted and several kinds of rejects
    assert outcomes["accepted"] > N // 50 and len(outcomes) >= 3, outcomes
