"""A small eBPF assembler: named opcodes, instructions with symbolic jump targets, and a linker.

Code is built as a list of `Insn` and `Label` items; jumps name a label
instead of an offset. `assemble()` drops every instruction no path reaches
(the verifier refuses unreachable code) and every jump to the instruction
right after it, resolves the labels and returns the instructions; `encode()`
gives the raw struct bpf_insn array (8 bytes each; BPF_LD_IMM64 takes two).

Constants follow include/uapi/linux/bpf_common.h and bpf.h; classic BPF
(bpftap.filter.translate reads it) shares the class, size, mode and
operation encodings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# instruction classes (BPF_RET and BPF_MISC are classic BPF's 0x06 and 0x07)
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
RET, MISC = 0x06, 0x07
# load and store sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
BYTES_SIZE = {4: W, 2: H, 1: B, 8: DW}
# modes
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
# ALU operations
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0)
# jump operations
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE, JSLT, JSLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0)
# operand source
K, X = 0x00, 0x08
# classic BPF: RET's value source, MISC's operations
RVAL_A = 0x10
TAX, TXA = 0x00, 0x80
# BPF_END direction
TO_LE, TO_BE = 0x00, 0x08
# BPF_LD_IMM64 source register: the immediate is a map's fd
PSEUDO_MAP_FD = 1

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# helpers (enum bpf_func_id); none of them is GPL-only
FUNC_MAP_LOOKUP_ELEM = 1
FUNC_TAIL_CALL = 12
FUNC_SKB_LOAD_BYTES = 26

S16 = range(-(1 << 15), 1 << 15)
S32 = range(-(1 << 31), 1 << 31)


class AsmError(ValueError):
    """Code the assembler cannot encode (an offset or immediate out of range, an unknown label)."""


@dataclass(frozen=True)
class Label:
    """A position in the code, the target of jumps."""

    name: str


@dataclass(frozen=True)
class Insn:
    """One eBPF instruction; `target` names the label a jump goes to."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # a jump's label
    imm64: int | None = None  # BPF_LD_IMM64: the 64-bit immediate (two slots)

    @property
    def slots(self) -> int:
        return 2 if self.code == LD | DW | IMM else 1

    @property
    def is_jump(self) -> bool:
        cls, op = self.code & 0x07, self.code & 0xF0
        return cls in (JMP, JMP32) and op not in (CALL, EXIT)

    @property
    def ends_flow(self) -> bool:
        """No fall-through to the next instruction: exit or unconditional jump."""
        op = self.code & 0xF0
        return self.code & 0x07 == JMP and op in (JA, EXIT)


Item = Insn | Label


def s32(value: int) -> int:
    """`value` (a u32 or an s32) as the signed 32-bit immediate with the same low 32 bits."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# --- constructors --------------------------------------------------------------------------------------------------


def mov64(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def mov64_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, imm=imm)


def mov32(dst: int, src: int) -> Insn:
    return Insn(ALU | MOV | X, dst, src)


def mov32_imm(dst: int, imm: int) -> Insn:
    """dst = imm as a u32 (the upper 32 bits cleared)."""
    return Insn(ALU | MOV | K, dst, imm=s32(imm))


def alu64(op: int, dst: int, src: int) -> Insn:
    return Insn(ALU64 | op | X, dst, src)


def alu64_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | op | K, dst, imm=imm)


def alu32(op: int, dst: int, src: int) -> Insn:
    return Insn(ALU | op | X, dst, src)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU | op | K, dst, imm=s32(imm))


def neg32(dst: int) -> Insn:
    return Insn(ALU | NEG | K, dst)


def to_be(dst: int, bits: int) -> Insn:
    """dst = the low `bits` of dst read big-endian (a byte swap on little-endian hosts), zero-extended."""
    return Insn(ALU | END | TO_BE, dst, imm=bits)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | size, dst, src, off)


def stx(size: int, dst: int, off: int, src: int) -> Insn:
    return Insn(STX | MEM | size, dst, src, off)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | size, dst, off=off, imm=imm)


def jmp(op: int, dst: int, target: str, src: int = 0) -> Insn:
    """if (dst OP src) goto target, 64-bit."""
    return Insn(JMP | op | X, dst, src, target=target)


def jmp_imm(op: int, dst: int, imm: int, target: str) -> Insn:
    """if (dst OP imm) goto target, 64-bit (imm sign-extended)."""
    return Insn(JMP | op | K, dst, imm=imm, target=target)


def jmp32(op: int, dst: int, src: int, target: str) -> Insn:
    return Insn(JMP32 | op | X, dst, src, target=target)


def jmp32_imm(op: int, dst: int, imm: int, target: str) -> Insn:
    """if ((u32)dst OP (u32)imm) goto target."""
    return Insn(JMP32 | op | K, dst, imm=s32(imm), target=target)


def ja(target: str) -> Insn:
    return Insn(JMP | JA, target=target)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, imm=helper)


def exit_() -> Insn:
    return Insn(JMP | EXIT)


def ld_imm64(dst: int, value: int) -> Insn:
    """dst = a 64-bit constant."""
    return Insn(LD | DW | IMM, dst, imm64=value & 0xFFFFFFFFFFFFFFFF)


def ld_map_fd(dst: int, fd: int) -> Insn:
    """dst = the map behind `fd` (BPF_LD_IMM64 with BPF_PSEUDO_MAP_FD)."""
    return Insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, imm64=fd)


# --- linking -------------------------------------------------------------------------------------------------------


def _successors(items: Sequence[Item], labels: dict[str, int], i: int) -> list[int]:
    insn = items[i]
    assert isinstance(insn, Insn)
    nxt = [i + 1] if not insn.ends_flow else []
    if insn.is_jump:
        if insn.target not in labels:
            raise AsmError(f"unknown label {insn.target!r}")
        nxt.append(labels[insn.target])
    return nxt


def _live(items: Sequence[Item]) -> list[Item]:
    """The code without unreachable instructions and jumps to the next one (until nothing changes)."""
    items = list(items)
    while True:
        labels = _label_index(items)
        seen: set[int] = set()
        stack = [0]
        while stack:
            i = stack.pop()
            while i < len(items) and isinstance(items[i], Label):
                i += 1
            if i >= len(items):
                raise AsmError("code falls off the end of the program")
            if i in seen:
                continue
            seen.add(i)
            stack.extend(_successors(items, labels, i))
        kept = [item for i, item in enumerate(items) if isinstance(item, Label) or i in seen]
        # a jump to the instruction right after it (past labels only) is a no-op
        drop = set()
        for i, item in enumerate(kept):
            if isinstance(item, Insn) and item.code == JMP | JA:
                j = i + 1
                while j < len(kept) and isinstance(kept[j], Label):
                    if kept[j] == Label(item.target or ""):
                        drop.add(i)
                        break
                    j += 1
        kept = [it for i, it in enumerate(kept) if i not in drop]
        if len(kept) == len(items):
            return kept
        items = kept


def _label_index(items: Sequence[Item]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for i, item in enumerate(items):
        if isinstance(item, Label):
            if item.name in labels:
                raise AsmError(f"label {item.name!r} defined twice")
            labels[item.name] = i
    return labels


def assemble(code: Sequence[Item]) -> list[Insn]:
    """The linked program: unreachable instructions dropped, jump offsets resolved.

    Raises AsmError for an unknown label, code that falls off the end, or an
    offset past the 16-bit range.
    """
    items = _live(code)
    address: dict[str, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, Label):
            address[item.name] = pc
        else:
            pc += item.slots
    out: list[Insn] = []
    pc = 0
    for item in items:
        if isinstance(item, Label):
            continue
        if item.target is not None:
            if item.target not in address:
                raise AsmError(f"unknown label {item.target!r}")
            rel = address[item.target] - (pc + 1)
            if rel not in S16:
                raise AsmError(f"jump to {item.target!r} is {rel} instructions away (at most 32767)")
            out.append(Insn(item.code, item.dst, item.src, rel, item.imm))
        else:
            out.append(item)
        pc += item.slots
    return out


def encode(insns: Iterable[Insn]) -> bytes:
    """struct bpf_insn array (little-endian host): code u8, dst:4 src:4, off s16, imm s32."""
    parts = []
    for insn in insns:
        if insn.imm64 is not None:
            lo, hi = insn.imm64 & 0xFFFFFFFF, (insn.imm64 >> 32) & 0xFFFFFFFF
            parts.append(struct.pack("<BBhi", insn.code, insn.src << 4 | insn.dst, 0, s32(lo)))
            parts.append(struct.pack("<BBhi", 0, 0, 0, s32(hi)))
            continue
        if insn.off not in S16 or insn.imm not in S32:
            raise AsmError(f"instruction {insn} does not fit (off s16, imm s32)")
        parts.append(struct.pack("<BBhi", insn.code, insn.src << 4 | insn.dst, insn.off, insn.imm))
    return b"".join(parts)
