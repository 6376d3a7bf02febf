"""The kernel log: records the programs write reach the agent's log formatted, and a flood is held back and counted."""

from __future__ import annotations

import logging
import time

import pytest

from bpftap import abi
from bpftap.agent.kernel_log import BURST, KernelLog
from bpftap.agent.tables import Tables
from bpftap.bpf.objects import BpfObject, SkBuff
from bpftap.compile.classifier import compile_rules
from bpftap.compile.slots import assign_session_slots
from bpftap.config import parse_config

from .conftest import KernelNs
from .test_mirror_table import CONFIG, INNER_V4, hop, program, xfer_ctx

pytestmark = pytest.mark.kernel


def consumer(tables: Tables, obj: BpfObject) -> KernelLog:
    klog = KernelLog(obj.map(abi.MAP_EVENTS), tables.session_name, lambda: tables.counters()["log_lost"])
    klog.start()
    return klog


def test_five_event_kinds_reach_the_log_formatted(
    loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs, caplog: pytest.LogCaptureFixture
) -> None:
    obj, tables = loaded
    caplog.set_level(logging.INFO, logger="bpftap.kernel")
    klog = consumer(tables, obj)
    try:
        # unresolved and oversize: one copy each for rule 40's two sessions
        # no room for a fragment
        cfg, _ = program(tables, kernel_ns, hops={"ids4": None, "ids6": hop(kernel_ns, 6, mtu=55)})
        obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=xfer_ctx(tables, cfg.rules, 40))
        # rate limited: the second copy within the burst of a 1-copy-a-second session
        limited = {**CONFIG, "sessions": [{"name": "ids4", "remote": "198.18.2.1", "vni": 42, "rate_limit": {"pps": 1}},
                                          {"name": "ids6", "remote": "2001:db8:2::1", "vni": 43}]}
        cfg, _ = program(tables, kernel_ns, limited)
        for _ in range(3):
            obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=xfer_ctx(tables, cfg.rules, 20))
        # encap failure: slots out of header-length order (IPv6 first) make the head too long
        swapped = parse_config(CONFIG, "test.yaml")
        slots = {"ids6": 0, "ids4": 1}
        for sess in swapped.sessions:
            tables.write_session(slots[sess.name], sess, hop(kernel_ns, sess.remote.version))
        tables.write_rules(compile_rules(swapped, slots), kernel_ns.k1)
        obj.program(abi.PROG_ENCAP).test_run(INNER_V4, ctx=xfer_ctx(tables, swapped.rules, 40))
        # clone failure: stage 1 with no encap device; the sessions written first, as the agent does, so the
        # log thread still knows their names if it reads the records above only after this flip
        slots = assign_session_slots(swapped.sessions)
        for sess in swapped.sessions:
            tables.write_session(slots[sess.name], sess, hop(kernel_ns, sess.remote.version))
        tables.write_rules(compile_rules(swapped, slots), 0)
        obj.program(abi.PROG_INGRESS).test_run(INNER_V4, ctx=SkBuff(ifindex=kernel_ns.k0))
        time.sleep(0.5)
    finally:
        klog.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "rule 40, session ids4: copy not sent: no route or neighbour for the collector yet" in text
    assert "session ids6: copy not sent: " in text and "exceed the egress MTU 55" in text
    assert "session ids4: copy not sent: over the session's rate limit" in text
    assert "header failed" in text
    assert "rule 20, from k0: could not clone the packet to the encap device" in text
    kinds = {getattr(r, "fields", {}).get("event") for r in caplog.records}
    assert {"unresolved", "oversize", "rate_limited", "encap_fail", "clone_fail"} <= kinds


def test_a_flood_of_a_million_is_held_back_and_counted(
    loaded: tuple[BpfObject, Tables], kernel_ns: KernelNs, caplog: pytest.LogCaptureFixture
) -> None:
    obj, tables = loaded
    caplog.set_level(logging.INFO, logger="bpftap.kernel")
    cfg = parse_config(CONFIG, "test.yaml")
    tables.write_rules(compile_rules(cfg, assign_session_slots(cfg.sessions)), 0)  # no encap device: clones fail
    klog = consumer(tables, obj)
    start = time.monotonic()
    try:
        # stage 1 leaves the packet as it found it, so a million repeats are a million failed clones
        obj.program(abi.PROG_INGRESS).test_run(INNER_V4, ctx=SkBuff(ifindex=kernel_ns.k0), repeat=1_000_000)
        time.sleep(0.5)
    finally:
        klog.close()
    elapsed = time.monotonic() - start
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "clone_fail"]
    assert len(logged) <= BURST + elapsed + 1, len(logged)
    held = sum(getattr(r, "fields", {}).get("suppressed", {}).get("clone_fail", 0) for r in caplog.records)
    lost = sum(getattr(r, "fields", {}).get("lost", 0) for r in caplog.records)
    assert held > 0 and lost > 0
    # every one of the million is accounted for: logged, held back, or lost in a full ring
    assert len(logged) + held + lost == 1_000_000, (len(logged), held, lost)
    assert tables.counters()["clone_fail"] == 1_000_000
