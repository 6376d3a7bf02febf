"""The kernel's log: fixed records from the `events` ring buffer, decoded, rate-limited and logged.

The BPF programs write `struct mirror_log` records (no bpf_printk: the object
is not GPL); this thread reads them, names the rule, session and interface,
and logs them through the `bpftap.kernel` logger (text, or JSON lines with
`--log-format json`). Each event kind may log a burst of BURST records, then
one a second; the rest are counted and reported every REPORT_SECONDS and at
the end, with the records the full ring buffer lost (MS_LOG_LOST).
"""

from __future__ import annotations

import ctypes
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bpftap import abi
from bpftap.bpf.objects import Map, RingBuffer

log = logging.getLogger("bpftap.kernel")

BURST = 5
REPORT_SECONDS = 10.0
_LEVELS = {
    abi.MirrorLevel.DEBUG: logging.DEBUG,
    abi.MirrorLevel.INFO: logging.INFO,
    abi.MirrorLevel.WARN: logging.WARNING,
    abi.MirrorLevel.ERROR: logging.ERROR,
}
_TEXT = {
    abi.MirrorEvent.CLONE_FAIL: "could not clone the packet to the encap device (error {a0})",
    abi.MirrorEvent.UNRESOLVED: "copy not sent: no route or neighbour for the collector yet",
    abi.MirrorEvent.OVERSIZE: "copy not sent: {a0} bytes exceed the egress MTU {a1}",
    abi.MirrorEvent.ENCAP_FAIL: "copy not sent: growing or writing its {a0}-byte header failed",
    abi.MirrorEvent.RATE_LIMITED: "copy not sent: over the session's rate limit",
    abi.MirrorEvent.VLAN_DEPTH: "copy not sent: more VLAN tags than bpftap parses",
    abi.MirrorEvent.SHED: "copy not sent: no room for its priority ({a0}: 0 high, 2 low) under the node's copy budget "
                          "or on its link",
    abi.MirrorEvent.FRAG_FAIL: "copy incomplete: cutting or sending its outer fragment {a0} (MTU {a1}) failed",
}


@dataclass(frozen=True)
class Record:
    """One decoded kernel log record."""

    ts_ns: int
    event: abi.MirrorEvent
    level: abi.MirrorLevel
    ifindex: int
    rule: int
    session: int  # stats_id + 1, 0 none
    args: tuple[int, int]

    @classmethod
    def decode(cls, data: bytes) -> Record | None:
        """A record from ring buffer bytes; None if the size or a code is not one we know."""
        if len(data) != ctypes.sizeof(abi.MirrorLog):
            return None
        raw = abi.MirrorLog.from_buffer_copy(data)
        try:
            event, level = abi.MirrorEvent(raw.code), abi.MirrorLevel(raw.level)
        except ValueError:
            return None
        return cls(raw.ts_ns, event, level, raw.ifindex, raw.rule, raw.session, (raw.arg[0], raw.arg[1]))


class RateLimiter:
    """BURST records per event kind, then one a second; counts what it holds back."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.tokens: dict[abi.MirrorEvent, float] = {}
        self.last: dict[abi.MirrorEvent, float] = {}
        self.suppressed: Counter[abi.MirrorEvent] = Counter()

    def allow(self, event: abi.MirrorEvent) -> bool:
        t = self.now()
        tokens = min(BURST, self.tokens.get(event, BURST) + (t - self.last.get(event, t)))
        self.last[event] = t
        if tokens >= 1:
            self.tokens[event] = tokens - 1
            return True
        self.tokens[event] = tokens
        self.suppressed[event] += 1
        return False


def format_record(rec: Record, session_name: Callable[[int], str | None]) -> tuple[str, dict[str, object]]:
    """The log message and its structured fields (the JSON formatter adds them)."""
    fields: dict[str, object] = {"event": rec.event.name.lower()}
    where = []
    if rec.rule:
        fields["rule"] = rec.rule
        where.append(f"rule {rec.rule}")
    if rec.session:
        name = session_name(rec.session - 1) or f"#{rec.session - 1}"
        fields["session"] = name
        where.append(f"session {name}")
    if rec.ifindex:
        try:
            ifname = socket.if_indextoname(rec.ifindex)
        except OSError:
            ifname = f"ifindex {rec.ifindex}"
        fields["interface"] = ifname
        where.append(f"from {ifname}")
    text = _TEXT[rec.event].format(a0=rec.args[0], a1=rec.args[1])
    return f"kernel: {', '.join(where)}: {text}" if where else f"kernel: {text}", fields


class RingReader(threading.Thread):
    """A thread that hands each record of a BPF ring buffer to `_sample` until close(), calling `report` now and
    then."""

    def __init__(self, ring: Map, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.closing = threading.Event()
        self._ring = RingBuffer(ring, self._sample)

    def _sample(self, data: int, size: int) -> int:
        raise NotImplementedError

    def report(self) -> None:
        """Log what happened since the last report (nothing here)."""

    def run(self) -> None:
        last = time.monotonic()
        while not self.closing.is_set():
            self._ring.poll(200)
            if time.monotonic() - last >= REPORT_SECONDS:
                self.report()
                last = time.monotonic()

    def drain(self) -> None:
        """Hand every record the ring buffer holds now to `_sample`."""
        self._ring.poll(0)

    def close(self) -> None:
        """Stop, drain what is left, report, free the ring buffer."""
        self.closing.set()
        if self.ident is not None:
            self.join(timeout=2)
        self.drain()
        self.report()
        self._ring.free()


class KernelLog(RingReader):
    """Reads `events` until close(); `lost()` reads the kernel's count of records it could not write."""

    def __init__(self, events: Map, session_name: Callable[[int], str | None], lost: Callable[[], int]) -> None:
        super().__init__(events, "kernel-log")
        self.session_name, self.lost = session_name, lost
        self.limiter = RateLimiter()
        self.received = 0
        self._reported_lost = 0

    def _sample(self, data: int, size: int) -> int:
        self.received += 1
        rec = Record.decode(ctypes.string_at(data, size))
        if rec is None:
            log.warning("kernel: a log record of %d bytes that this agent cannot read (object from another build?)",
                        size)
        elif self.limiter.allow(rec.event):
            message, fields = format_record(rec, self.session_name)
            log.log(_LEVELS[rec.level], "%s", message, extra={"fields": fields})
        return 0

    def report(self) -> None:
        """Log what the rate limit held back and what the full ring buffer lost since the last report."""
        held = dict(self.limiter.suppressed)
        self.limiter.suppressed.clear()
        lost = self.lost()
        new_lost, self._reported_lost = lost - self._reported_lost, lost
        if held:
            counts = ", ".join(f"{event.name.lower()} {n}" for event, n in sorted(held.items()))
            log.warning("kernel: rate limit held back %s", counts, extra={"fields": {"suppressed": {
                event.name.lower(): n for event, n in held.items()}}})
        if new_lost:
            log.warning("kernel: %d log records lost (ring buffer full)", new_lost,
                        extra={"fields": {"lost": new_lost}})
