"""The generated filter program of one rule slot and direction (mirror_abi.h, "Rule filters").

Stage 1 tail-calls it when the first rule a packet meets has a filter. It
evaluates every filter of the slot (bpftap.filter.translate), sets the bit
of each filter rule whose expression accepts the packet in the per-CPU
`filter_bits` value of the slot and clears the others', then tail-calls
stage 1's resume entry, which classifies again with those bits. Its licence
is the object's (BSD-2-Clause); it calls bpf_map_lookup_elem,
bpf_skb_load_bytes and bpf_tail_call, none of them GPL-only, and never
writes the packet.
"""

from __future__ import annotations

from collections.abc import Sequence

from bpftap import abi
from bpftap.bpf.objects import SkBuff, load_raw_program
from bpftap.filter import ebpf as E
from bpftap.filter.ebpf import Item, Label
from bpftap.filter.pcap import CompiledFilter, compile_filter
from bpftap.filter.translate import (
    STACK_MEM,
    STACK_TAG,
    STACK_VHEAD,
    STACK_VLEN,
    translate,
)

LICENSE = b"BSD-2-Clause"
WORDS_OFF = 8 * abi.SUMMARY_WORDS  # struct rule_bits: words[] after summary[]


def _skb_bytes(off: int, stack: int, size: int) -> list[Item]:
    """bpf_skb_load_bytes(skb, off, fp + stack, size); a failure leaves the zeros there."""
    return [E.mov64(E.R1, E.R6), E.mov64_imm(E.R2, off), E.mov64(E.R3, E.R10), E.alu64_imm(E.ADD, E.R3, stack),
            E.mov64_imm(E.R4, size), E.call(E.FUNC_SKB_LOAD_BYTES)]


def build(slot: int, direction: int, filters: Sequence[tuple[int, CompiledFilter]], bits_fd: int,
          progs_fd: int) -> list[Item]:
    """The program, unassembled: `filters` are (rule position in the slot, libpcap's program)."""
    code: list[Item] = [E.mov64(E.R6, E.R1)]
    # the stack it reads: zeroed (M[] is written before it is read, the verifier wants to know)
    code += [E.st(E.DW, E.R10, off, 0) for off in range(STACK_VHEAD, 0, 8)]
    code += [
        E.ldx(E.W, E.R2, E.R6, SkBuff.vlan_present.offset),
        E.alu64_imm(E.LSH, E.R2, 2),
        E.stx(E.DW, E.R10, STACK_TAG, E.R2),
        E.ldx(E.W, E.R3, E.R6, SkBuff.len.offset),
        E.alu64(E.ADD, E.R3, E.R2),
        E.stx(E.DW, E.R10, STACK_VLEN, E.R3),
        E.jmp_imm(E.JEQ, E.R2, 0, "untagged"),
        # the virtual frame's first 20 bytes: MAC addresses, the tag the kernel holds, 4 bytes after
        *_skb_bytes(0, STACK_VHEAD, 12),
        *_skb_bytes(12, STACK_VHEAD + 16, 2),
        *_skb_bytes(14, STACK_VHEAD + 18, 2),
        E.ldx(E.W, E.R2, E.R6, SkBuff.vlan_proto.offset),  # __be16 as it was on the wire
        E.stx(E.H, E.R10, STACK_VHEAD + 12, E.R2),
        E.ldx(E.W, E.R2, E.R6, SkBuff.vlan_tci.offset),  # host order
        E.to_be(E.R2, 16),
        E.stx(E.H, E.R10, STACK_VHEAD + 14, E.R2),
        Label("untagged"),
        # the slot's verdict bitmap, this CPU's
        E.st(E.W, E.R10, -4, slot),
        E.ld_map_fd(E.R1, bits_fd),
        E.mov64(E.R2, E.R10),
        E.alu64_imm(E.ADD, E.R2, -4),
        E.call(E.FUNC_MAP_LOOKUP_ELEM),
        E.jmp_imm(E.JEQ, E.R0, 0, "resume"),
        E.mov64(E.R7, E.R0),
    ]
    assert STACK_MEM >= STACK_VHEAD + 24
    for i, (position, compiled) in enumerate(filters):
        word = WORDS_OFF + 8 * (position // 64)
        mask = 1 << (position % 64)
        yes, no, nxt = f"f{i}_yes", f"f{i}_no", f"f{i}_next"
        code += translate(compiled, f"f{i}_", yes, no)
        code += [Label(yes), E.ld_imm64(E.R2, mask), E.ldx(E.DW, E.R1, E.R7, word), E.alu64(E.OR, E.R1, E.R2),
                 E.stx(E.DW, E.R7, word, E.R1), E.ja(nxt),
                 Label(no), E.ld_imm64(E.R2, ~mask), E.ldx(E.DW, E.R1, E.R7, word), E.alu64(E.AND, E.R1, E.R2),
                 E.stx(E.DW, E.R7, word, E.R1), Label(nxt)]
    code += [
        Label("resume"),
        E.mov64(E.R1, E.R6),
        E.ld_map_fd(E.R2, progs_fd),
        E.mov64_imm(E.R3, abi.FILTER_RESUME + direction - 1),
        E.call(E.FUNC_TAIL_CALL),
        # no resume entry: the original passes, no copy
        E.mov64_imm(E.R0, abi.MIRROR_PASS),
        E.exit_(),
    ]
    return code


def load(slot: int, direction: int, filters: Sequence[tuple[int, CompiledFilter | str]], bits_fd: int,
         progs_fd: int) -> int:
    """Load the program; returns its fd (the caller closes it). Raises BpfError with the verifier's last words."""
    compiled = [(pos, f if isinstance(f, CompiledFilter) else compile_filter(f)) for pos, f in filters]
    raw = E.encode(E.assemble(build(slot, direction, compiled, bits_fd, progs_fd)))
    return load_raw_program(f"bpftap_filt_{slot}{'ie'[direction - 1]}", raw, LICENSE,
                            f"the filter program of rule slot {slot} ({len(filters)} filters)")


__all__ = ["build", "load"]
