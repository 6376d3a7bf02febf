"""The constants of bpf/mirror_abi.h read from its text (no compiler), and the tunnel-registry check built on it.

tests/bpf/test_abi_layout.py compares abi.py with these; the unit tests
compare bpftap.tunnels.TYPES with `enum mirror_tunnel` through
`tunnels_missing`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "mirror_abi.h"
TUNNEL_PREFIX = "MIRROR_TUN_"


def header_constants() -> dict[str, int]:
    text = HEADER.read_text()
    found = {}
    # object-like macros whose value is an integer expression of earlier ones
    for name, macro in re.findall(r"^#define\s+([A-Z]\w*)[ \t]+(.+?)\s*(?:/\*.*)?$", text, re.M):
        expr = re.sub(r"(0x[0-9a-fA-F]+|\d+)U\b", r"\1", macro.strip())
        expr = re.sub(r"[A-Z_][A-Z0-9_]*", lambda m: str(found.get(m.group(0), m.group(0))), expr).replace("/", "//")
        # eval: our own header's text, with no builtins; a macro that is not an integer expression is left out
        with contextlib.suppress(Exception):
            found[name] = int(eval(expr, {"__builtins__": {}}))  # noqa: S307
    for body in re.findall(r"enum \w+ \{(.*?)\};", text, re.S):
        nxt = 0
        for name, value in re.findall(r"(\w+)(?:\s*=\s*(\w+))?,", re.sub(r"/\*.*?\*/", "", body, flags=re.S)):
            nxt = int(value, 0) if value else nxt
            found[name] = nxt
            nxt += 1
    return found


def tunnels_missing(names: Iterable[str], header: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """Compare tunnel registry names with `enum mirror_tunnel`: (names C lacks, C enumerators the registry lacks).

    Both empty when the two lists agree; e.g. (["fake"], []) for a type
    registered in Python only.
    """
    consts = header_constants() if header is None else header
    in_c = [k.removeprefix(TUNNEL_PREFIX).lower() for k in consts
            if k.startswith(TUNNEL_PREFIX) and not k.endswith("__MAX")]
    names = list(names)
    return [n for n in names if n not in in_c], [c for c in in_c if c not in names]
