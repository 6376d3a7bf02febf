"""abi.py mirrors bpf/mirror_abi.h: struct layouts against the object's BTF, constants against the header."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import pytest

from bpftap import abi

from ..abi_header import header_constants

STRUCTS = {
    "mirror_config": abi.MirrorConfig,
    "mirror_rule": abi.MirrorRule,
    "addr_key": abi.AddrKey,
    "iface_key": abi.IfaceKey,
    "session_limit": abi.SessionLimit,
    "mirror_log": abi.MirrorLog,
    "rule_bits": abi.RuleBits,
    "class_ref": abi.ClassRef,
    "mirror_session": abi.MirrorSession,
    "rule_stats": abi.RuleStats,
    "session_stats": abi.SessionStats,
    "session_seq": abi.SessionSeq,
    "mirror_clock": abi.MirrorClock,
    "mirror_copy": abi.MirrorCopy,
    "link_rate": abi.LinkRate,
    "link_state": abi.LinkState,
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


def test_constants_match_header() -> None:
    h = header_constants()
    for name in ("RULE_WORDS", "SUMMARY_WORDS", "COARSE_RULES", "CLASS_CAPACITY", "PORT_KEYS", "NO_PORTS", "META_KEYS",
                 "EVENTS_BYTES", "GROUP_BUCKETS", "MIRROR_RF_GROUP", "BUDGET_KEY", "PRIO_RESERVE_HIGH",
                 "PRIO_RESERVE_NORMAL", "PRIO_RESERVE_LOW", "COPY_BYTES_MAX", "COPIES_BYTES", "COPY_HDR_LEN",
                 "VLAN_KEYS", "FLAG_KEYS", "NOT_TCP", "IFACE_KEYS",
                 "MAX_RULES", "RULE_SLOTS", "MAX_SESSIONS", "MAX_VLAN_TAGS", "MAX_IPV6_EXT", "MIRROR_PASS",
                 "MIRROR_COPY_MARK", "XFER_TAG", "XFER_TAG_MASK", "XFER_EGRESS", "XFER_RULE_MASK",
                 "XFER_PASS_SHIFT", "XFER_PASS_MASK",
                 "XFER_SOURCE_SHIFT", "XFER_SOURCE_MASK", "MAX_SOURCES",
                 "FRAG_TAG", "FRAG_SLOT_SHIFT", "FRAG_SLOT_MASK", "FRAG_INDEX_MASK", "MAX_FRAGS",
                 "MIRROR_SF_KEY", "MIRROR_SF_SEQ", "MIRROR_SF_PLATFORM", "MIRROR_SF_LINK", "MIRROR_HDR_MAX",
                 "GENEVE_OPT_CLASS_BPFTAP", "GENEVE_OPT_TYPE_SOURCE", "GENEVE_OPT_VERSION", "ERSPAN3_GRA_1588",
                 "ERSPAN3_PLATFORM_ID", "MAX_LINKS", "LINK_BURST_NS", "MIRROR_RF_FILTER", "MAX_FILTER_RULES",
                 "FILTER_PROGS", "FILTER_RESUME"):
        assert getattr(abi, name) == h[name], name
    for enum_type, prefix in ((abi.MirrorStat, "MS_"), (abi.MirrorDir, "MIRROR_DIR_"),
                              (abi.MirrorAction, "MIRROR_ACT_"), (abi.MirrorTunnel, "MIRROR_TUN_"),
                              (abi.MirrorDim, "MIRROR_DIM_"), (abi.MirrorEvent, "MIRROR_EV_"),
                              (abi.MirrorLevel, "MIRROR_LOG_"), (abi.MirrorPriority, "MIRROR_PRIO_")):
        in_header = {k[len(prefix):]: v for k, v in h.items() if k.startswith(prefix) and not k.endswith("__MAX")}
        assert {m.name: m.value for m in enum_type} == in_header, enum_type.__name__
    assert h["MS__MAX"] == abi.MS__MAX


def test_program_and_map_names_exist_in_object() -> None:
    from bpftap.bpf.objects import BpfObject

    with BpfObject.open(abi.object_path()) as obj:
        obj.load()
        for prog in abi.PROGRAMS:
            assert obj.program(prog).fd > 0
        for m in (abi.MAP_ADDR_CLASSES, abi.MAP_PORT_CLASSES, abi.MAP_META_CLASSES, abi.MAP_CLASS_BITS,
                  abi.MAP_VLAN_CLASSES, abi.MAP_FLAG_CLASSES, abi.MAP_IFACE_CLASSES,
                  abi.MAP_CONFIG, abi.MAP_RULES, abi.MAP_SESSIONS, abi.MAP_STATS, abi.MAP_RULE_STATS,
                  abi.MAP_SESSION_STATS, abi.MAP_SESSION_SEQS, abi.MAP_CLOCK,
                  abi.MAP_SOURCE_IDS, abi.MAP_SOURCE_IFINDEXES, abi.MAP_LINK_RATES, abi.MAP_LINK_STATE,
                  abi.MAP_FILTER_BITS, abi.MAP_FILTER_PROGS):
            assert obj.map(m).fd > 0
