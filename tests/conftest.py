"""Suite-wide: a per-tier summary, and under BPFTAP_REQUIRE_KERNEL=1 no skipped kernel or lab test.

CI runs as root on a machine with the kernel features bpftap needs, so there a
skip in tests/bpf or tests/integration means something is broken, not absent,
except a skip that names a kernel module this kernel truly lacks (its reason
starts with MISSING_MODULE, e.g. no GENEVE or GRE device to receive copies).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

TIERS = ("unit", "bpf", "integration")
MISSING_MODULE = "this kernel has no"


def _tier(nodeid: str) -> str:
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[1] in TIERS else "other"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") and hasattr(report, "nodeid"):
                counts[(_tier(report.nodeid), outcome)] += 1
    terminalreporter.section("bpftap tiers")
    for tier in TIERS:
        row = ", ".join(f"{counts[(tier, o)]} {o}" for o in ("passed", "failed", "skipped", "error"))
        terminalreporter.write_line(f"{tier:<12} {row}")
    unexpected = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if _tier(r.nodeid) in ("bpf", "integration") and MISSING_MODULE not in str(r.longrepr)
    ]
    if os.environ.get("BPFTAP_REQUIRE_KERNEL") == "1" and unexpected:
        terminalreporter.write_line(
            f"BPFTAP_REQUIRE_KERNEL=1: {len(unexpected)} kernel/lab tests skipped without a missing module: failing"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("BPFTAP_REQUIRE_KERNEL") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [
        r
        for r in (reporter.stats.get("skipped", []) if reporter else [])
        if _tier(r.nodeid) in ("bpf", "integration") and MISSING_MODULE not in str(r.longrepr)
    ]
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
