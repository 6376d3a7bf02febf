"""Rule filters in the kernel (issue 15): the generated program's verdict equals libpcap's, frame by frame.

256 expressions (tests/bpf/filter_corpus.py: hosts, nets, ports and ranges,
protocols, TCP flags, VLANs, byte offsets, arithmetic, lengths, nesting)
over 100,000 frames (real frames of every shape, mutated, cut short, grown
to 3,500 bytes, and random bytes). 64 filters share one program, as 64
filter rules of a slot do; each BPF_PROG_TEST_RUN gives 64 verdicts, read
back from this CPU's `filter_bits`. libpcap's `pcap_offline_filter` is the
reference. Frames whose outer tag the kernel holds beside the frame cannot
be made by BPF_PROG_TEST_RUN: tests/integration/test_filters.py has those.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from bpftap import abi
from bpftap.bpf.objects import BpfObject, Program
from bpftap.filter import program
from bpftap.filter.pcap import compile_filter
from bpftap.filter.translate import UnsupportedFilter, translate

from .filter_corpus import corpus, expressions

pytestmark = pytest.mark.kernel

EXPRESSIONS = 256
# the kernel matrix's emulated guests (tools/kernels) check 5,000 frames: 100,000 take them most of an hour
FRAMES = 100_000 if float(os.environ.get("BPFTAP_TIME_SCALE", "1")) == 1 else 5_000


@pytest.fixture(scope="module")
def obj(kernel_ns: object) -> Iterator[BpfObject]:
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the per-CPU verdicts read back are this CPU's
    loaded = BpfObject.open(abi.object_path()).load()
    try:
        yield loaded
    finally:
        loaded.close()
        os.sched_setaffinity(0, cpus)


def verdicts(obj: BpfObject, exprs: list[str], frames: list[bytes]) -> list[int]:
    """The kernel's verdicts: per frame, bit i set when exprs[i] (at most 64) accepts it."""
    bits = obj.map(abi.MAP_FILTER_BITS, percpu=True)
    fd = program.load(0, abi.MirrorDir.INGRESS, list(enumerate(exprs)), bits.fd, obj.map(abi.MAP_FILTER_PROGS).fd)
    prog = Program("filter", fd)
    cpu = min(os.sched_getaffinity(0))
    out = []
    try:
        for frame in frames:
            assert prog.test_run(frame).retval == abi.MIRROR_PASS  # no resume entry: the original passes
            out.append(bits.lookup_percpu(0, abi.RuleBits)[cpu].words[0])
    finally:
        os.close(fd)
    return out


def test_the_kernels_verdict_is_libpcaps_on_every_frame(obj: BpfObject) -> None:
    exprs = expressions(EXPRESSIONS)
    frames = corpus(FRAMES)
    assert len(exprs) == EXPRESSIONS and len(frames) == FRAMES
    started = time.monotonic()
    mismatches = []
    for first in range(0, len(exprs), 64):
        group = exprs[first:first + 64]
        kernel = verdicts(obj, group, frames)
        for i, expr in enumerate(group):
            match = compile_filter(expr).matcher()
            for frame, got in zip(frames, kernel, strict=True):
                want = match(frame)
                if bool(got >> i & 1) != want and len(mismatches) < 10:
                    mismatches.append(f"{expr!r}: kernel {not want}, libpcap {want}, frame {frame.hex()}")
    accepted = sum(compile_filter(e).matches(f) for e in exprs[:8] for f in frames[:2000])
    assert not mismatches, "\n".join(mismatches)
    assert accepted > 500, "the corpus hardly exercises the expressions"
    print(f"{len(exprs)} expressions x {len(frames)} frames in {time.monotonic() - started:.1f} s")


def test_a_slot_of_max_filter_rules_loads(obj: BpfObject) -> None:
    exprs = expressions(abi.MAX_FILTER_RULES, seed=3)
    bits, progs = obj.map(abi.MAP_FILTER_BITS, percpu=True), obj.map(abi.MAP_FILTER_PROGS)
    started = time.monotonic()
    fd = program.load(1, abi.MirrorDir.EGRESS, [(16383 - i, e) for i, e in enumerate(exprs)], bits.fd, progs.fd)
    os.close(fd)
    assert time.monotonic() - started < 10


def test_classic_bpf_it_cannot_run_is_refused_by_name() -> None:
    from bpftap.filter.pcap import CompiledFilter, Insn

    ancillary = CompiledFilter("(made up)", (Insn(0x20, 0, 0, 0xFFFFF000 + 44), Insn(0x06, 0, 0, 1)))
    with pytest.raises(UnsupportedFilter, match="ancillary load"):
        translate(ancillary, "f_", "yes", "no")
    with pytest.raises(UnsupportedFilter, match="instruction 0xff"):
        translate(CompiledFilter("(made up)", (Insn(0xFF, 0, 0, 0),)), "f_", "yes", "no")


def test_the_translators_context_offsets_are_the_sk_buffs() -> None:
    from bpftap.bpf.objects import SkBuff
    from bpftap.filter import translate as T

    assert (SkBuff.data.offset, SkBuff.data_end.offset) == (T.SKB_DATA, T.SKB_DATA_END)
