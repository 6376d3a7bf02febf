"""Parsers for the rule fields beyond addresses and ports: VLAN id, TCP flags, source interface.

Each takes the raw YAML value and returns the typed value or raises
ValueError with the message the config error shows after `rules[i].field: `.
"""

from __future__ import annotations

import re

from bpftap import abi

# the untagged "VLAN": what `vlan: untagged` matches (the kernel's key for no tag)
VLAN_UNTAGGED = abi.VLAN_KEYS - 1
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}
_IFNAME = re.compile(r"[^\s/:]{1,15}")


def vlan(value: object) -> int:
    """`vlan: 100` (the outer tag's id, 0-4095) or `vlan: untagged`."""
    if isinstance(value, str) and value.strip().lower() == "untagged":
        return VLAN_UNTAGGED
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a VLAN id; give 0-4095 or 'untagged'")
    if not 0 <= value <= 4095:
        raise ValueError(f"VLAN id {value} is out of range 0-4095")
    return value


def tcp_flags(value: object) -> tuple[int, int]:
    """`tcp_flags: "syn,!ack"`: flags that must be set, and (with !) clear; returns (mask, value)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a list of TCP flags; write e.g. \"syn,!ack\"")
    mask = bits = 0
    for word in value.replace(" ", "").lower().split(","):
        clear = word.startswith("!")
        name = word.lstrip("!")
        flag = TCP_FLAGS.get(name)
        if flag is None:
            raise ValueError(f"unknown TCP flag {name!r}; known: {', '.join(TCP_FLAGS)} (prefix ! for clear)")
        if mask & flag:
            raise ValueError(f"TCP flag {name!r} is given twice")
        mask |= flag
        bits |= 0 if clear else flag
    return mask, bits


def interface(value: object) -> str:
    """`interface: eth0` or a glob: the source interface a packet was seen on."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not an interface name or glob")
    if not _IFNAME.fullmatch(value) and not any(c in value for c in "*?["):
        raise ValueError(f"{value!r} is not an interface name (1-15 characters, no '/', ':' or spaces)")
    return value
