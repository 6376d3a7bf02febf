"""Kernel log records: decoding, the per-event rate limit, formatting, JSON lines."""

from __future__ import annotations

import ctypes
import json
import logging

from bpftap import abi
from bpftap.agent.kernel_log import BURST, RateLimiter, Record, format_record
from bpftap.cli import JsonFormatter


def raw(code: int = abi.MirrorEvent.OVERSIZE, level: int = abi.MirrorLevel.WARN) -> bytes:
    rec = abi.MirrorLog(ts_ns=5, code=code, level=level, ifindex=0, rule=20, session=3)
    rec.arg[0], rec.arg[1] = 1564, 1500
    return bytes(rec)


def test_decode_checks_size_and_codes() -> None:
    rec = Record.decode(raw())
    assert rec is not None
    assert (rec.event, rec.rule, rec.session, rec.args) == (abi.MirrorEvent.OVERSIZE, 20, 3, (1564, 1500))
    assert Record.decode(raw()[:-1]) is None
    assert Record.decode(raw(code=99)) is None
    assert Record.decode(raw(level=9)) is None
    assert ctypes.sizeof(abi.MirrorLog) == 48


def test_format_names_rule_session_and_values() -> None:
    rec = Record.decode(raw())
    assert rec is not None
    message, fields = format_record(rec, {2: "ids"}.get)
    assert message == "kernel: rule 20, session ids: copy not sent: 1564 bytes exceed the egress MTU 1500"
    assert fields == {"event": "oversize", "rule": 20, "session": "ids"}


def test_rate_limit_allows_a_burst_then_one_a_second_per_event() -> None:
    clock = [0.0]
    limiter = RateLimiter(now=lambda: clock[0])
    assert [limiter.allow(abi.MirrorEvent.OVERSIZE) for _ in range(BURST + 3)] == [True] * BURST + [False] * 3
    assert limiter.allow(abi.MirrorEvent.UNRESOLVED)  # each event kind has its own budget
    clock[0] = 1.0
    assert limiter.allow(abi.MirrorEvent.OVERSIZE) and not limiter.allow(abi.MirrorEvent.OVERSIZE)
    assert limiter.suppressed[abi.MirrorEvent.OVERSIZE] == 4


def test_json_lines_carry_the_fields() -> None:
    record = logging.LogRecord("bpftap.kernel", logging.WARNING, __file__, 1, "kernel: %s", ("x",), None)
    record.fields = {"event": "oversize", "rule": 20}
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("level", "logger", "message", "event", "rule")} == {
        "level": "warning", "logger": "bpftap.kernel", "message": "kernel: x", "event": "oversize", "rule": 20}
