"""libpcap's classic BPF, translated to eBPF for one filter of bpftap's generated filter program.

The approach follows cloudflare/cbpfc (BSD-3-Clause): A and X live in
callee-saved registers, scratch memory M[] on the stack, every packet load
is bounds-checked and an out-of-bounds load rejects the packet (as libpcap's
interpreter returns 0), and each classic jump becomes a labelled eBPF jump.
Loads read the linear part directly and go through bpf_skb_load_bytes
beyond it (bytes past the linear part of a GSO packet); nothing is ever
written to the packet, so the verifier never adds its un-cloning prologue.
The filter sees the frame as tcpdump
on the interface would: an outer VLAN tag the kernel holds beside the frame
(skb->vlan_present) is put back at offset 12 (the `virtual frame`).

Registers and stack, set up by bpftap.filter.program:

    R6  the __sk_buff            R8  A            R9  X
    R7  the verdict bitmap (a filter_bits value)
    fp-8   a load's bytes        fp-16  the virtual frame's length (u64)
    fp-24  the tag's 4 bytes, if one is held beside the frame (u64: 4, else 0)
    fp-88..fp-24   M[0..15]      fp-112..fp-88  virtual bytes [0, 20) when tagged

Semantics checked against libpcap 1.10's bpf_filter() by the differential
test (tests/bpf/test_filter_diff.py): 32-bit unsigned arithmetic; division
or modulo by a zero X rejects; a shift by X of 32 or more gives 0.
"""

from __future__ import annotations

from bpftap.filter import ebpf as E
from bpftap.filter.ebpf import Insn, Item, Label
from bpftap.filter.pcap import CompiledFilter, FilterError

A, X = E.R8, E.R9
STACK_LOADBUF = -8
STACK_VLEN = -16
STACK_TAG = -24
STACK_MEM = -88
STACK_VHEAD = -112
VHEAD_LEN = 20  # virtual bytes [0, 20): the MAC addresses, the tag, the 4 frame bytes after them
MEMWORDS = 16
# struct __sk_buff's data and data_end (bpf.objects.SkBuff; a test ties them): here, so that validating a
# config translates without loading libbpf
SKB_DATA, SKB_DATA_END = 76, 80
SKF_AD_OFF = 0xFFFFF000  # classic BPF's ancillary loads (Linux extensions) start here

_SIZES = {E.W: 4, E.H: 2, E.B: 1}
_ALU = {E.ADD, E.SUB, E.MUL, E.DIV, E.OR, E.AND, E.LSH, E.RSH, E.MOD, E.XOR}
_JUMPS = {E.JEQ, E.JGT, E.JGE, E.JSET}


class UnsupportedFilter(FilterError):
    """libpcap compiled it, but into classic BPF the kernel path cannot run."""


def _load(dst: int, size: int, reject: str, tag: str) -> list[Item]:
    """dst = the `size` bytes of the virtual frame at offset R1 (a u64), big-endian; out of bounds: `reject`."""
    shifted, phys, helper, swap, done = (f"{tag}_{x}" for x in ("shifted", "phys", "helper", "swap", "done"))
    code: list[Item] = [
        E.ldx(E.DW, E.R2, E.R10, STACK_TAG),
        E.jmp_imm(E.JEQ, E.R2, 0, phys),
        # tagged: the virtual frame is 4 bytes longer; its first 20 bytes are at fp-112
        E.ldx(E.DW, E.R3, E.R10, STACK_VLEN),
        E.mov64(E.R4, E.R1),
        E.alu64_imm(E.ADD, E.R4, size),
        E.jmp(E.JGT, E.R4, reject, E.R3),
        E.jmp_imm(E.JGT, E.R1, VHEAD_LEN - size, shifted),
        E.mov64(E.R2, E.R10),
        E.alu64_imm(E.ADD, E.R2, STACK_VHEAD),
        E.alu64(E.ADD, E.R2, E.R1),
        # byte by byte, most significant first (the verifier wants stack reads aligned)
        E.ldx(E.B, dst, E.R2, 0),
        *[insn for j in range(1, size) for insn in (E.ldx(E.B, E.R3, E.R2, j), E.alu32_imm(E.LSH, dst, 8),
                                                     E.alu32(E.OR, dst, E.R3))],
        E.ja(done),
        Label(shifted),
        E.alu64_imm(E.SUB, E.R1, 4),
        Label(phys),
        # in the linear part: a direct read (no write ever: that would make the verifier un-clone every skb)
        # (the verifier bounds a packet pointer only while offset + size stays within 0xffff)
        E.jmp_imm(E.JGT, E.R1, 0xFFFF - 4, helper),
        E.ldx(E.W, E.R2, E.R6, SKB_DATA),
        E.ldx(E.W, E.R3, E.R6, SKB_DATA_END),
        E.alu64(E.ADD, E.R2, E.R1),
        E.mov64(E.R4, E.R2),
        E.alu64_imm(E.ADD, E.R4, size),
        E.jmp(E.JGT, E.R4, helper, E.R3),
        E.ldx(E.BYTES_SIZE[size], dst, E.R2, 0),
        E.ja(swap),
        Label(helper),
        # beyond it, bpf_skb_load_bytes; offsets of 2^31 and more are in no frame (and would wrap in its u32)
        E.mov64(E.R2, E.R1),
        E.alu64_imm(E.RSH, E.R2, 31),
        E.jmp_imm(E.JNE, E.R2, 0, reject),
        E.mov64(E.R2, E.R1),
        E.mov64(E.R1, E.R6),
        E.mov64(E.R3, E.R10),
        E.alu64_imm(E.ADD, E.R3, STACK_LOADBUF),
        E.mov64_imm(E.R4, size),
        E.call(E.FUNC_SKB_LOAD_BYTES),
        E.jmp_imm(E.JNE, E.R0, 0, reject),
        E.ldx(E.BYTES_SIZE[size], dst, E.R10, STACK_LOADBUF),
        Label(swap),
    ]
    if size > 1:
        code.append(E.to_be(dst, 8 * size))
    return [*code, Label(done)]



def _mem(k: int, expression: str) -> int:
    if not 0 <= k < MEMWORDS:
        raise UnsupportedFilter(expression, f"scratch memory word {k} (there are {MEMWORDS})")
    return STACK_MEM + 4 * k


def translate(compiled: CompiledFilter, prefix: str, accept: str, reject: str) -> list[Item]:
    """eBPF for `compiled` that jumps to `accept` or `reject` (labels of the caller); labels start with `prefix`.

    Raises UnsupportedFilter for classic BPF it cannot take (Linux's
    ancillary loads; libpcap does not emit them for a dead DLT_EN10MB handle).
    """
    expr = compiled.expression
    code: list[Item] = [E.mov32_imm(A, 0), E.mov32_imm(X, 0)]
    n = len(compiled.insns)

    def at(pc: int) -> str:
        if not 0 <= pc < n:
            raise UnsupportedFilter(expr, f"a jump to instruction {pc} of {n}")
        return f"{prefix}{pc}"

    for pc, (op, jt, jf, k) in enumerate(compiled.insns):
        code.append(Label(f"{prefix}{pc}"))
        cls, size, mode = op & 0x07, op & 0x18, op & 0xE0
        tag = f"{prefix}{pc}_l"
        if cls in (E.LD, E.LDX) and mode in (E.ABS, E.IND, E.MSH) and k >= SKF_AD_OFF:
            raise UnsupportedFilter(expr, f"an ancillary load (Linux extension, offset 0x{k:x})")
        if op in (E.LD | E.ABS | E.W, E.LD | E.ABS | E.H, E.LD | E.ABS | E.B):
            code += [E.mov32_imm(E.R1, k), *_load(A, _SIZES[size], reject, tag)]
        elif op in (E.LD | E.IND | E.W, E.LD | E.IND | E.H, E.LD | E.IND | E.B):
            code += [E.mov32_imm(E.R1, k), E.alu64(E.ADD, E.R1, X), *_load(A, _SIZES[size], reject, tag)]
        elif op == E.LDX | E.MSH | E.B:
            code += [E.mov32_imm(E.R1, k), *_load(X, 1, reject, tag), E.alu32_imm(E.AND, X, 0xF),
                     E.alu32_imm(E.LSH, X, 2)]
        elif op in (E.LD | E.LEN | E.W, E.LDX | E.LEN | E.W):
            code.append(E.ldx(E.W, A if cls == E.LD else X, E.R10, STACK_VLEN))
        elif op in (E.LD | E.IMM, E.LDX | E.IMM):
            code.append(E.mov32_imm(A if cls == E.LD else X, k))
        elif op in (E.LD | E.MEM, E.LDX | E.MEM):
            code.append(E.ldx(E.W, A if cls == E.LD else X, E.R10, _mem(k, expr)))
        elif op in (E.ST, E.STX):
            code.append(E.stx(E.W, E.R10, _mem(k, expr), A if op == E.ST else X))
        elif cls == E.ALU:
            code += _alu(op, k, reject, expr, tag)
        elif cls == E.JMP:
            code += _jump(op, pc, jt, jf, k, at, expr)
        elif cls == E.RET:
            src = op & 0x18
            if src == E.K:
                code.append(E.ja(accept if k else reject))
            else:
                code += [E.jmp32_imm(E.JNE, A if src == E.RVAL_A else X, 0, accept), E.ja(reject)]
        elif op == E.MISC | E.TAX:
            code.append(E.mov32(X, A))
        elif op == E.MISC | E.TXA:
            code.append(E.mov32(A, X))
        else:
            raise UnsupportedFilter(expr, f"classic BPF instruction 0x{op:02x} at {pc}")
    # libpcap's programs end in a return; one that does not falls off and rejects
    code.append(E.ja(reject))
    return code


def _alu(op: int, k: int, reject: str, expr: str, tag: str) -> list[Item]:
    alu, src = op & 0xF0, op & 0x08
    if alu == E.NEG:
        return [E.neg32(A)]
    if alu not in _ALU:
        raise UnsupportedFilter(expr, f"ALU operation 0x{op:02x}")
    if src == E.K:
        if alu in (E.DIV, E.MOD) and k == 0:
            return [E.ja(reject)]
        if alu in (E.LSH, E.RSH) and k >= 32:
            return [E.mov32_imm(A, 0)]
        return [E.alu32_imm(alu, A, k)]
    if alu in (E.DIV, E.MOD):
        return [E.jmp32_imm(E.JEQ, X, 0, reject), E.alu32(alu, A, X)]
    if alu in (E.LSH, E.RSH):
        # eBPF masks the count to 5 bits; libpcap shifts everything out
        done = f"{tag}_shifted"
        return [E.alu32(alu, A, X), E.jmp32_imm(E.JLT, X, 32, done), E.mov32_imm(A, 0), Label(done)]
    return [E.alu32(alu, A, X)]


def _jump(op: int, pc: int, jt: int, jf: int, k: int, at, expr: str) -> list[Insn]:  # type: ignore[no-untyped-def]
    jop, src = op & 0xF0, op & 0x08
    if jop == E.JA:
        if k >= 1 << 31:  # libpcap's interpreter runs a backward jump; the kernel's verifier wants no loop
            raise UnsupportedFilter(expr, "libpcap compiles it into a loop (protochain does), which the kernel "
                                          "path does not run; use 'ip proto N' / 'ip6 proto N' instead")
        return [E.ja(at(pc + 1 + k))]
    if jop not in _JUMPS:
        raise UnsupportedFilter(expr, f"jump 0x{op:02x}")
    yes, no = at(pc + 1 + jt), at(pc + 1 + jf)
    test = E.jmp32(jop, A, X, yes) if src == E.X else E.jmp32_imm(jop, A, k, yes)
    return [test, E.ja(no)]
