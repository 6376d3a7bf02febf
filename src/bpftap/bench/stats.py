"""Pure statistics of `bpftap bench`: summaries, ratios to a same-run baseline, bands.

Nothing here touches the kernel or the clock, so tests/unit/test_bench_stats.py
checks it all. A *summary* is ``{"median", "min", "max", "n", "values"}``; a
*ratio* pairs each repetition of a configuration with the baseline measured
in the same round (configurations are interleaved), so drift between rounds
cancels out instead of widening the spread.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Summary = dict[str, Any]

RULE_COUNTS_WANTED = (10, 100, 1000, 10000)
"""Rule counts the issue asks for; `clip_rule_counts` fits them to abi.MAX_RULES."""

UTILISATIONS = (0.50, 0.65, 0.75, 0.85, 0.95)
"""Offered original load as a fraction of the baseline capacity C (tier 3)."""

# The system bpftap is modelled on, as the issue quotes it (loss of originals
# in %, and copies missing in %, per channel-utilisation band).
# Bands are (lo, hi]: "under 0.01 % up to 75 %" puts 75 % itself in the lower band.
REFERENCE_BANDS: tuple[tuple[float, float, str], ...] = ((0.0, 0.65, "<=65%"), (0.65, 0.75, "65-75%"),
                                                        (0.75, 0.85, "75-85%"), (0.85, 1.0, "85-99%"))
REFERENCE = {
    "not mirrored": {"<=65%": "<0.01", "65-75%": "<0.01", "75-85%": "3-4", "85-99%": "7-8"},
    "mirrored": {"<=65%": "<0.01", "65-75%": "~5", "75-85%": "~5", "85-99%": "~15"},
    "copies missing": {"<=65%": "0", "65-75%": "5-8", "75-85%": "5-8", "85-99%": "<=20"},
}


def summarize(values: Iterable[float | None]) -> Summary:
    """Median, min and max of `values` (NaNs dropped); all None when nothing is left."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def ratios(values: Sequence[float | None], baseline: Sequence[float | None]) -> list[float]:
    """Round-by-round ratios ``values[i] / baseline[i]``; rounds with no or zero baseline are left out."""
    if len(values) != len(baseline):
        raise ValueError(f"{len(values)} values against {len(baseline)} baseline rounds")
    return [v / b for v, b in zip(values, baseline, strict=True) if v is not None and b]


def ratio_summary(values: Sequence[float | None], baseline: Sequence[float | None]) -> Summary:
    """`summarize` of the round-paired ratios."""
    return summarize(ratios(values, baseline))


def clip_rule_counts(wanted: Sequence[int], max_rules: int) -> tuple[list[int], list[int]]:
    """Rule counts that fit `max_rules`, and those that do not.

    A clipped list always ends at `max_rules` when anything was clipped, so
    the largest rule set the object holds is measured too.
    """
    kept = sorted({n for n in wanted if 1 <= n <= max_rules})
    clipped = sorted(n for n in set(wanted) if n > max_rules)
    if clipped and max_rules not in kept:
        kept.append(max_rules)
    return kept, clipped


def rounds(configs: Sequence[str], reps: int, warmup: int = 1) -> list[tuple[int, str]]:
    """The interleaved schedule A B C A B C ...: ``(round, config)``; round 0 .. warmup-1 are warm-up."""
    return [(r, c) for r in range(warmup + reps) for c in configs]


def loss_resolution(packets: int) -> float | None:
    """The smallest loss in % one point of `packets` can show (one packet), None for none."""
    return 100.0 / packets if packets > 0 else None


def band_of(utilisation: float) -> str:
    """The reference band a utilisation (fraction of C) falls in."""
    for lo, hi, name in REFERENCE_BANDS:
        if lo < utilisation <= hi + 1e-9 or (lo == 0 and utilisation <= 0):
            return name
    return REFERENCE_BANDS[-1][2]


def cpu_busy(before: Sequence[int], after: Sequence[int]) -> dict[str, float]:
    """Busy and steal fractions between two /proc/stat ``cpu`` lines (jiffies fields, in order).

    Fields: user nice system idle iowait irq softirq steal [guest guest_nice].
    Busy counts everything but idle and iowait; guest time is already in user.
    """
    delta = [a - b for a, b in zip(after[:8], before[:8], strict=False)]
    total = sum(delta)
    if total <= 0:
        return {"busy": 0.0, "steal": 0.0, "jiffies": 0}
    idle = delta[3] + delta[4]
    return {"busy": (total - idle) / total, "steal": delta[7] / total, "jiffies": total}


def fmt_ratio(s: Summary | None, digits: int = 2) -> str:
    """``0.93x (0.90-0.97)`` from a summary of ratios; ``-`` when empty."""
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.{digits}f}x ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def fmt_value(s: Summary | None, unit: str = "", digits: int = 1) -> str:
    """``123.4 unit [120.0-130.1]`` from a summary; ``-`` when empty."""
    if not s or s.get("median") is None:
        return "-"
    u = f" {unit}" if unit else ""
    return f"{s['median']:.{digits}f}{u} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def fmt_pct(value: float | None, resolution: float | None = None) -> str:
    """A loss or delivery percentage; below the point's resolution it reads ``< res``."""
    if value is None:
        return "-"
    if value == 0 and resolution is not None:
        return f"0 (<{resolution:.1g})"
    if abs(value) < 0.01:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def settled(read: Callable[[], int], quiet: float = 0.5, timeout: float = 5.0,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """`read()` once it has stopped changing for `quiet` seconds (or `timeout` has passed): the last value.

    Copies of a point's originals may still be on their way when its
    generator stops (a userspace sender's queue: `redirect_chain: false`);
    counted in the next point's window they made it deliver more copies
    than it had originals. Each point waits for its own instead.
    """
    last, since, deadline = read(), clock(), clock() + timeout
    while clock() < deadline:
        sleep(min(0.1, quiet))
        now = read()
        if now != last:
            last, since = now, clock()
        elif clock() - since >= quiet:
            break
    return last
