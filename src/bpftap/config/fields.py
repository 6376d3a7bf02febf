"""Parsers for rule fields beyond addresses and ports (VLAN id, TCP flags, source interface), and session rate limits.

Each takes the raw YAML value and returns the typed value or raises
ValueError with the message the config error shows after `rules[i].field: `.
"""

from __future__ import annotations

import re

from bpftap import abi
from bpftap.config.values import shown

# the untagged "VLAN": what `vlan: untagged` matches (the kernel's key for no tag)
VLAN_UNTAGGED = abi.VLAN_KEYS - 1
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}
_IFNAME = re.compile(r"[^\s/:]{1,15}")


def vlan(value: object) -> int:
    """`vlan: 100` (the outer tag's id, 0-4095) or `vlan: untagged`."""
    if isinstance(value, str) and value.strip().lower() == "untagged":
        return VLAN_UNTAGGED
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{shown(value)} is not a VLAN id; give 0-4095 or 'untagged'")
    if not 0 <= value <= 4095:
        raise ValueError(f"VLAN id {value} is out of range 0-4095")
    return value


def tcp_flags(value: object) -> tuple[int, int]:
    """`tcp_flags: "syn,!ack"`: flags that must be set, and (with !) clear; returns (mask, value)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{shown(value)} is not a list of TCP flags; write e.g. \"syn,!ack\"")
    mask = bits = 0
    for word in value.replace(" ", "").lower().split(","):
        clear = word.startswith("!")
        name = word.lstrip("!")
        flag = TCP_FLAGS.get(name)
        if flag is None:
            raise ValueError(f"unknown TCP flag {shown(name)}; known: {', '.join(TCP_FLAGS)} (prefix ! for clear)")
        if mask & flag:
            raise ValueError(f"TCP flag {shown(name)} is given twice")
        mask |= flag
        bits |= 0 if clear else flag
    return mask, bits


def interface(value: object) -> str:
    """`interface: eth0` or a glob: the source interface a packet was seen on."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{shown(value)} is not an interface name or glob")
    if not _IFNAME.fullmatch(value) and not any(c in value for c in "*?["):
        raise ValueError(f"{shown(value)} is not an interface name (1-15 characters, no '/', ':' or spaces)")
    return value


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def rate(value: object, unit: str) -> int:
    """A rate in `unit` (pps or bps): 1000, 10k, 1.5M, 10G, or with the unit, 10Gbps."""
    if isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a rate")
    if isinstance(value, int):
        number = value
    else:
        match = _RATE.fullmatch(str(value).strip().lower().removesuffix(unit))
        if not match:
            raise ValueError(f"{shown(value)} is not a rate; write e.g. 1000, 10k or 1.5M ({unit})")
        number = int(float(match.group(1)) * _UNITS[match.group(2)])
    # bps: the kernel's bucket holds rate x 10^8 ns in 64 bits, so 100 Gbit/s at most
    if not 1 <= number <= (2**32 - 1 if unit == "pps" else 10**11):
        raise ValueError(f"{shown(value)} is out of range for {unit}")
    return number


def rate_limit(value: object) -> tuple[int, int]:
    """`rate_limit: {pps: 10k, bps: 100M}` (either or both): returns (pps, bps), 0 for no limit."""
    if not isinstance(value, dict) or not value or set(value) - {"pps", "bps"}:
        raise ValueError(f"{shown(value)} is not a rate limit; write e.g. {{pps: 10k}}, {{bps: 100M}} or both")
    return (rate(value["pps"], "pps") if "pps" in value else 0, rate(value["bps"], "bps") if "bps" in value else 0)
