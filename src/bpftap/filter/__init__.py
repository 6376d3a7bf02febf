"""pcap-filter expressions (tcpdump syntax) in rules: libpcap compiles, bpftap runs them in the kernel.

`pcap`: libpcap through ctypes (the compiler and the reference matcher);
`translate`: classic BPF to eBPF; `program`: the generated program of a rule
slot (mirror_abi.h, "Rule filters"); `ebpf`: the assembler they use.
"""

from __future__ import annotations

from bpftap.filter.ebpf import Label, exit_
from bpftap.filter.pcap import CompiledFilter, compile_filter


def check_expression(expression: str) -> CompiledFilter:
    """libpcap's program for `expression`, checked to be one the kernel path can run; FilterError if not."""
    from bpftap.filter.ebpf import assemble
    from bpftap.filter.translate import translate

    compiled = compile_filter(expression)
    assemble([*translate(compiled, "f_", "yes", "no"), Label("yes"), Label("no"), exit_()])
    return compiled
