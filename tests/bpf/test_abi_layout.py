"""abi.py mirrors bpf/mirror_abi.h: struct layouts against the object's BTF, constants against the header."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bpftap import abi

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "mirror_abi.h"
STRUCTS = {
    "mirror_config": abi.MirrorConfig,
    "mirror_rule": abi.MirrorRule,
    "mirror_session": abi.MirrorSession,
    "rule_stats": abi.RuleStats,
    "session_stats": abi.SessionStats,
}


@pytest.fixture(scope="module")
def btf_structs() -> dict[str, dict[str, object]]:
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool missing: apt-get install bpftool")
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(abi.object_path()), "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t["kind"] == "STRUCT"}


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_layout_matches_btf(name: str, btf_structs: dict[str, dict[str, object]]) -> None:
    mirror = STRUCTS[name]
    btf = btf_structs[name]
    assert btf["size"] == ctypes.sizeof(mirror), f"struct {name}: size"
    members = {m["name"]: m["bits_offset"] // 8 for m in btf["members"]}  # type: ignore[attr-defined]
    ours = {f[0]: getattr(mirror, f[0]).offset for f in mirror._fields_}
    assert ours == members, f"struct {name}: field offsets differ"


def header_constants() -> dict[str, int]:
    text = HEADER.read_text()
    found = {}
    for name, value in re.findall(r"#define\s+(\w+)\s+\(?(-?(?:0x[0-9a-fA-F]+|\d+))U?\)?", text):
        found[name] = int(value, 0)
    for body in re.findall(r"enum \w+ \{(.*?)\};", text, re.S):
        nxt = 0
        for name, value in re.findall(r"(\w+)(?:\s*=\s*(\w+))?,", re.sub(r"/\*.*?\*/", "", body, flags=re.S)):
            nxt = int(value, 0) if value else nxt
            found[name] = nxt
            nxt += 1
    return found


def test_constants_match_header() -> None:
    h = header_constants()
    for name in ("MAX_RULES", "RULE_SLOTS", "MAX_SESSIONS", "MAX_VLAN_TAGS", "MAX_IPV6_EXT", "MIRROR_PASS",
                 "MIRROR_COPY_MARK", "XFER_TAG", "XFER_TAG_MASK", "XFER_EGRESS", "XFER_RULE_MASK"):
        assert getattr(abi, name) == h[name], name
    for enum_type, prefix in ((abi.MirrorStat, "MS_"), (abi.MirrorDir, "MIRROR_DIR_"),
                              (abi.MirrorAction, "MIRROR_ACT_"), (abi.MirrorTunnel, "MIRROR_TUN_")):
        in_header = {k[len(prefix):]: v for k, v in h.items() if k.startswith(prefix) and not k.endswith("__MAX")}
        assert {m.name: m.value for m in enum_type} == in_header, enum_type.__name__
    assert abi.MS__MAX == h["MS__MAX"]


def test_program_and_map_names_exist_in_object() -> None:
    from bpftap.bpf.objects import BpfObject

    with BpfObject.open(abi.object_path()) as obj:
        obj.load()
        for prog in (abi.PROG_INGRESS, abi.PROG_EGRESS, abi.PROG_ENCAP):
            assert obj.program(prog).fd > 0
        for m in (abi.MAP_CONFIG, abi.MAP_RULES, abi.MAP_SESSIONS, abi.MAP_STATS, abi.MAP_RULE_STATS,
                  abi.MAP_SESSION_STATS):
            assert obj.map(m).fd > 0
