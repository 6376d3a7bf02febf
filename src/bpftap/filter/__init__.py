"""pcap-filter expressions (tcpdump syntax) in rules: libpcap compiles, bpftap runs them in the kernel.

`pcap`: libpcap through ctypes (the compiler and the reference matcher).
"""

from __future__ import annotations

from bpftap.filter.pcap import CompiledFilter, compile_filter


def check_expression(expression: str) -> CompiledFilter:
    """libpcap's program for `expression`, checked to be one the kernel path can run; FilterError if not."""
    return compile_filter(expression)
