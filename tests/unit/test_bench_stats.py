"""The bench's statistics and report code, on made-up numbers (no kernel, no clock)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bpftap.bench import stats
from bpftap.bench.report import format_report, result_stem, tier1_lines, tier2_lines, tier3_lines


def test_summarize_median_min_max_and_drops_missing() -> None:
    s = stats.summarize([3.0, 1.0, None, 2.0, math.nan, 10.0])  # type: ignore[list-item]
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    assert stats.summarize([])["median"] is None


def test_ratios_pair_rounds_and_skip_missing_baselines() -> None:
    assert stats.ratios([2.0, 3.0, None, 8.0], [1.0, 0.0, 5.0, 4.0]) == [2.0, 2.0]
    s = stats.ratio_summary([10.0, 12.0, 9.0], [10.0, 10.0, 10.0])
    assert (s["median"], s["min"], s["max"]) == (1.0, 0.9, 1.2)
    with pytest.raises(ValueError):
        stats.ratios([1.0], [1.0, 2.0])


def test_rule_counts_are_clipped_to_max_rules_and_reported() -> None:
    assert stats.clip_rule_counts([10, 1000, 10000], 256) == ([10, 256], [1000, 10000])
    assert stats.clip_rule_counts([10, 100, 1000, 10000], 16384) == ([10, 100, 1000, 10000], [])
    assert stats.clip_rule_counts([10, 256, 1000], 256) == ([10, 256], [1000])


def test_rounds_interleave_configurations_after_a_warmup() -> None:
    assert stats.rounds(["a", "b"], reps=2, warmup=1) == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]


@pytest.mark.parametrize("util,band", [(0.5, "<=65%"), (0.65, "<=65%"), (0.75, "65-75%"), (0.85, "75-85%"),
                                       (0.95, "85-99%"), (0.99, "85-99%")])
def test_utilisations_fall_in_the_reference_bands(util: float, band: str) -> None:
    assert stats.band_of(util) == band
    assert stats.REFERENCE["not mirrored"][band]


def test_cpu_busy_from_proc_stat_deltas() -> None:
    before = [100, 0, 50, 800, 50, 0, 0, 0, 0, 0]
    after = [200, 0, 150, 900, 50, 0, 50, 50, 0, 0]  # 400 jiffies: 300 busy, 100 idle, 50 of them steal
    got = stats.cpu_busy(before, after)
    assert got["jiffies"] == 400 and got["busy"] == pytest.approx(0.75) and got["steal"] == pytest.approx(0.125)
    assert stats.cpu_busy(before, before)["busy"] == 0.0


def test_loss_resolution_and_formatting() -> None:
    assert stats.loss_resolution(1_000_000) == pytest.approx(1e-4)
    assert stats.loss_resolution(0) is None
    assert stats.fmt_pct(0.0, 0.002) == "0 (<0.002)"
    assert stats.fmt_pct(12.345) == "12.3"
    assert stats.fmt_ratio(stats.summarize([0.5, 0.4, 0.6])) == "0.50x (0.40-0.60)"
    assert stats.fmt_ratio(None) == "-"


def _row(kind: str, fam: int, size: int, ns: list[float], floor: list[float], **kw: int) -> dict:
    return {"kind": kind, "family": fam, "size": size, "ns": stats.summarize(ns),
            "ratio": stats.ratio_summary(ns, floor), "problem": None, **kw}


def test_report_tables_show_ratios_clipping_and_reference() -> None:
    floor = [15.0, 16.0, 15.0]
    rows = []
    for fam in (4, 6):
        for size in (64, 1500):
            rows += [_row("empty", fam, size, floor, floor),
                     _row("nomatch", fam, size, [45.0, 46, 44], floor, rules=10),
                     _row("match", fam, size, [250.0, 260, 255], floor, rules=10)]
    t1 = {"rows": rows, "rule_counts": [10], "clipped": [1000, 10000], "max_rules": 256, "problems": {},
          "match_totals": []}
    text = "\n".join(tier1_lines(t1))
    assert "45 2.9x" in text and "255 16.7x" in text and "clipped: MAX_RULES is 256" in text
    row = {"loss_pct": stats.summarize([0.0]), "copies_pct": stats.summarize([100.0]), "resolution_pct": 0.002}
    t3 = {"reps": 3, "seconds_per_point": 2, "capacity": {"64": {"pps": 40000.0}},
          "table": {c: {"64": {f"{u:.2f}": row for u in stats.UTILISATIONS}} for c in ("none", "mirror")}}
    text3 = "\n".join(tier3_lines(t3))
    assert "C = 40000 pps" in text3 and "0 (<0.002) / 100.0" in text3 and "7-8 / ~15 / <=20" in text3
    meta = {"host": "h", "uname_r": "6.18", "cpu_model": "cpu", "ncpus": 2, "bpf_jit_enable": "1",
            "mitigations_cmdline": ["mitigations=auto"], "commit": "abc", "dirty": True, "duration_s": 1.0}
    report = format_report({"meta": meta, "tier1": t1, "errors": {"tier2": "boom"}})
    assert "(dirty tree)" in report and "tier2: FAILED: boom" in report


def test_tier2_names_the_tapped_direction_when_it_is_not_both() -> None:
    def config(gbps: float) -> dict[str, object]:
        return {"gbps": stats.summarize([gbps]), "ratio": stats.summarize([gbps / 18.0]),
                "cpu_busy": stats.summarize([0.65]), "cpu_per_gb_ratio": stats.summarize([1.1])}

    t2 = {"seconds": 10, "reps": 3, "underlay_mtu": 9000, "link_offloads": True, "direction": "ingress",
          "configs": {"none": config(18.0), "mirror": config(15.0), "mirred": config(16.0)}}
    text = "\n".join(tier2_lines(t2))
    assert "tunnel TSO on it, tapped on ingress only" in text and "same run: 0.94x" in text
    assert "tapped on" not in tier2_lines({**t2, "direction": "both"})[0]


def test_result_file_is_named_by_date_and_host() -> None:
    stem = result_stem(Path("bench/results"), "my host!", when=0.0)
    assert stem.parent == Path("bench/results") and stem.name.endswith("-my_host_")
    assert len(stem.name.split("-")[0]) == 4  # the year


def test_a_second_run_the_same_day_gets_a_file_of_its_own(tmp_path: Path) -> None:
    first = result_stem(tmp_path, "vm", when=0.0)
    first.with_suffix(".json").write_text("{}")
    second = result_stem(tmp_path, "vm", when=0.0)
    assert second.name == first.name + "-2"


def test_a_count_is_read_once_it_settles() -> None:
    """Late copies count for their own point: the reading waits until the counter stays put."""
    t = [0.0]
    values = iter([100, 150, 180, 180, 180, 180, 180, 180, 180, 180])

    def sleep(dt: float) -> None:
        t[0] += dt

    assert stats.settled(lambda: next(values), quiet=0.25, clock=lambda: t[0], sleep=sleep) == 180
    assert t[0] < 1.0
    growing = iter(range(1000))
    t[0] = 0.0
    assert stats.settled(lambda: next(growing), quiet=0.25, timeout=1.0, clock=lambda: t[0], sleep=sleep) >= 10
    assert t[0] == pytest.approx(1.0, abs=0.11)


def test_tier3_reports_how_much_of_the_room_the_links_copies_filled() -> None:
    from bpftap.bench.loss import missing_floor, room_fill

    # a 100 Mbit/s link, originals of 1400 B payload (1442 B frames) at 4,000 pps: 53.9 Mbit/s of room;
    # 3,000 copies a second of 1492 B fill 35.8 Mbit/s of it
    point = {"offered_pps": 4000.0, "copies": 6000}
    assert abs(room_fill(point, 1400, 100_000_000, 2.0) - 100 * 35.808 / 53.856) < 0.01
    # with 5 % headroom copies may take 48.9 Mbit/s
    assert abs(room_fill(point, 1400, 100_000_000, 2.0, 5.0) - 100 * 35.808 / 48.856) < 0.01
    assert room_fill({"offered_pps": 9000.0, "copies": 10}, 1400, 100_000_000, 2.0) is None  # no room left
    # every original's copy needs 47.7 Mbit/s: all fit in 53.9, 48.9 with headroom: none must go missing
    assert missing_floor(point, 1400, 100_000_000) == 0.0
    assert missing_floor(point, 1400, 100_000_000, 5.0) == 0.0
    # at 6,000 pps: 30.8 Mbit/s of room for 71.6 Mbit/s of copies: at least 57 % cannot fit
    assert abs(missing_floor({"offered_pps": 6000.0}, 1400, 100_000_000) - 100 * (1 - 30.784 / 71.616)) < 0.01
    assert missing_floor({"offered_pps": 9000.0}, 1400, 100_000_000) == 100.0
    row = {"loss_pct": stats.summarize([0.0]), "copies_pct": stats.summarize([50.0]), "resolution_pct": 0.002,
           "room_fill_pct": stats.summarize([91.0, 90.0, 89.0]), "allowed_fill_pct": stats.summarize([99.0]),
           "missing_floor_pct": stats.summarize([30.0]), "missing_floor_headroom_pct": stats.summarize([36.0])}
    t3 = {"reps": 3, "seconds_per_point": 2, "capacity": {"64": {"pps": 40000.0}},
          "table": {c: {"64": {f"{u:.2f}": row for u in stats.UTILISATIONS}} for c in ("none", "links")}}
    text = "\n".join(tier3_lines(t3))
    assert "(rate less headroom, less originals): 50 % of C: 90 % / 99 %" in text
    assert "(floor of copies missing, no headroom / 5 % headroom): 50 % of C: 30 % / 36 %" in text


def test_tier1_shows_the_cost_of_an_original_on_a_listed_link_when_measured() -> None:
    floor = [15.0, 16.0, 15.0]
    rows = [_row(kind, fam, size, ns, floor) for fam in (4, 6) for size in (64, 1500)
            for kind, ns in (("empty", floor), ("link", [24.0, 25, 24]))]
    t1 = {"rows": rows, "rule_counts": [], "clipped": [], "max_rules": 256, "problems": {}, "match_totals": []}
    assert f"  {'original on a listed link':<30}" + f"{'24 1.6x':>16}" * 4 in tier1_lines(t1)
    assert not any("listed link" in line for line in tier1_lines({**t1, "rows": rows[::2]}))


def test_tier1_plot_takes_every_kind_of_row(tmp_path: Path) -> None:
    from bpftap.bench.plots import plot_tier1

    floor = [15.0, 16.0, 15.0]
    kinds = [("empty", {}), ("nomatch", {"rules": 10}), ("match", {"rules": 10}), ("link", {}), ("empty1", {}),
             ("encap", {"sessions": 1})]
    rows = [_row(kind, fam, size, [30.0, 31, 29], floor, **kw) for fam in (4, 6) for size in (64, 1500)
            for kind, kw in kinds]
    plot_tier1({"rows": rows}, tmp_path / "t1.png", "tier 1")
    assert (tmp_path / "t1.png").stat().st_size > 0
