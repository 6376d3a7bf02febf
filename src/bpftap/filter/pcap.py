"""libpcap through ctypes: a pcap-filter expression compiled to classic BPF, and matched.

Only libpcap itself decides what an expression means: `compile_filter` runs
`pcap_compile` on a dead handle (DLT_EN10MB: the Ethernet frame, as tcpdump
sees it on an interface) and returns the classic BPF instructions;
`CompiledFilter.matches` runs libpcap's own interpreter (`pcap_offline_filter`)
on a frame. The kernel path translates those instructions (bpftap.filter);
the collector's `--filter` and the tests use `matches` as the reference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import NamedTuple, Protocol

from bpftap.errors import BpftapError

DLT_EN10MB = 1
SNAPLEN = 262144  # tcpdump's default: every filter returns this for "keep"
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class FilterError(BpftapError):
    """An expression libpcap cannot compile; the message is libpcap's own."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression, self.reason = expression, reason
        super().__init__(f"{reason} (in {expression!r})")


class Insn(NamedTuple):
    """struct bpf_insn: one classic BPF instruction."""

    code: int
    jt: int
    jf: int
    k: int


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _PcapPkthdr(ctypes.Structure):
    # struct timeval (two longs on Linux), caplen, len
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long), ("caplen", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpftapError(f"libpcap not found ({name}): install the libpcap0.8 package (make deps does)") from e
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PcapPkthdr), ctypes.c_char_p]
    lib.pcap_offline_filter.restype = ctypes.c_int
    lib.pcap_lib_version.restype = ctypes.c_char_p
    return lib


def libpcap_version() -> str:
    version: bytes = _lib().pcap_lib_version()
    return version.decode()


class Matcher(Protocol):
    def __call__(self, frame: bytes, wire_len: int | None = None) -> bool: ...


@dataclass(frozen=True)
class CompiledFilter:
    """An expression and libpcap's classic BPF for it (optimised, as tcpdump compiles it)."""

    expression: str
    insns: tuple[Insn, ...]

    def _program(self) -> _BpfProgram:
        arr = (_BpfInsn * len(self.insns))(*(_BpfInsn(*i) for i in self.insns))
        prog = _BpfProgram(len(self.insns), arr)
        prog._keep = arr  # the array lives as long as the program
        return prog

    def matches(self, frame: bytes, wire_len: int | None = None) -> bool:
        """libpcap's verdict on one Ethernet frame (`wire_len`: its length on the wire, `len`)."""
        return self.matcher()(frame, wire_len)

    def matcher(self) -> Matcher:
        """A fast callable(frame, wire_len=None) -> bool, for many frames."""
        lib, prog, hdr = _lib(), self._program(), _PcapPkthdr()
        ref = ctypes.byref(prog)
        hdr_ref = ctypes.byref(hdr)

        def match(frame: bytes, wire_len: int | None = None) -> bool:
            hdr.caplen = len(frame)
            hdr.len = len(frame) if wire_len is None else wire_len
            verdict: int = lib.pcap_offline_filter(ref, hdr_ref, frame)
            return verdict != 0

        return match


@lru_cache(maxsize=4096)
def compile_filter(expression: str, snaplen: int = SNAPLEN) -> CompiledFilter:
    """libpcap's classic BPF for `expression`; FilterError with libpcap's message if it refuses."""
    lib = _lib()
    handle = lib.pcap_open_dead(DLT_EN10MB, snaplen)
    if not handle:
        raise BpftapError("pcap_open_dead failed")
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            raise FilterError(expression, (lib.pcap_geterr(handle) or b"cannot compile").decode(errors="replace"))
        try:
            insns = tuple(Insn(p.code, p.jt, p.jf, p.k) for p in prog.bf_insns[: prog.bf_len])
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
    return CompiledFilter(expression, insns)
