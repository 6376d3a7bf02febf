"""The text report of a `bpftap bench` result, and where its files go. Pure: data in, text out."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bpftap.bench.stats import REFERENCE, UTILISATIONS, band_of, fmt_pct, fmt_ratio, fmt_value


def result_stem(out_dir: Path, host: str, when: float | None = None) -> Path:
    """``<out_dir>/<YYYY-MM-DD>-<host>`` (host reduced to [A-Za-z0-9_.-]), then ``-2``, ``-3``, ... : a run
    never overwrites an earlier run's results."""
    day = time.strftime("%Y-%m-%d", time.localtime(when if when is not None else time.time()))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", host) or "host"
    stem, n = out_dir / f"{day}-{safe}", 1
    while stem.with_suffix(".json").exists():
        n += 1
        stem = out_dir / f"{day}-{safe}-{n}"
    return stem


def _cell(row: dict[str, Any] | None) -> str:
    if not row or not row["ns"].get("n"):
        return "-"
    mark = "!" if row.get("problem") else ""
    ratio = row["ratio"]["median"]
    return f"{row['ns']['median']:.0f} {ratio:.1f}x{mark}" if ratio else f"{row['ns']['median']:.0f}{mark}"


def tier1_lines(t1: dict[str, Any]) -> list[str]:
    cols = [(f, s) for f in (4, 6) for s in (64, 1500)]
    by = {(r["kind"], r["family"], r["size"], r.get("rules"), r.get("sessions")): r for r in t1["rows"]}
    lines = ["tier 1: ns per packet (median of 5) and x its floor; BPF_PROG_TEST_RUN pinned to CPU 1",
             f"  {'case':<30}" + "".join(f"{f'v{f} {s}B':>16}" for f, s in cols)]

    def row(label: str, key: tuple[Any, ...]) -> None:
        cells = [_cell(by.get((key[0], f, s, *key[1:]))) for f, s in cols]
        lines.append(f"  {label:<30}" + "".join(f"{c:>16}" for c in cells))

    row("empty program (floor)", ("empty", None, None))
    for n in t1["rule_counts"]:
        row(f"no match, {n} rules", ("nomatch", n, None))
    for n in t1["rule_counts"]:
        row(f"match (stage 1), {n} rules", ("match", n, None))
    for n in sorted({r["rules"] for r in t1["rows"] if r["kind"] == "nomatch-filters"}):
        row(f"no match, filters, {n} r", ("nomatch-filters", n, None))
    for n in sorted({r["rules"] for r in t1["rows"] if r["kind"] == "filter"}):
        row(f"8 filters run, {n} r", ("filter", n, None))
    if any(r["kind"] == "link" for r in t1["rows"]):
        row("original on a listed link", ("link", None, None))
    row("empty, repeat=1 (stage-2 floor)", ("empty1", None, None))
    for k in sorted({r["sessions"] for r in t1["rows"] if r["kind"] == "encap"}):
        row(f"encap (stage 2), {k} session{'s' * (k > 1)}", ("encap", None, k))
    tot = {(t["family"], t["size"], t["rules"], t["sessions"]): t for t in t1["match_totals"]}
    for n in t1["rule_counts"][-1:]:
        for k in sorted({t["sessions"] for t in t1["match_totals"]}):
            cells = []
            for f, s in cols:
                t = tot.get((f, s, n, k))
                cells.append(f"{t['ns']['median']:.0f} {t['ratio']['median']:.0f}x" if t and t["ns"]["n"] else "-")
            lines.append(f"  {f'matching packet, {n} r, {k} s':<30}" + "".join(f"{c:>16}" for c in cells))
    if t1.get("clipped"):
        lines.append(f"  rule counts {t1['clipped']} asked for, clipped: MAX_RULES is {t1['max_rules']}")
    if t1.get("problems"):
        lines.append("  ! not a valid measurement (unexpected verdict): "
                     + "; ".join(f"{k}: {v}" for k, v in sorted(t1["problems"].items())[:4])
                     + (" ..." if len(t1["problems"]) > 4 else ""))
    return lines


def tier2_lines(t2: dict[str, Any]) -> list[str]:
    lines = [f"tier 2: bulk TCP src->dst through tap, iperf3 {t2['seconds']:g} s x {t2['reps']} interleaved rounds"
             f", collector link MTU {t2.get('underlay_mtu', 9000)}"
             f"{', tunnel TSO on it' if t2.get('link_offloads') else ''}"
             f"{'' if t2.get('direction', 'both') == 'both' else ', tapped on ' + t2['direction'] + ' only'}",
             f"  {'config':<9}{'Gbit/s [min-max]':>24}{'x none':>20}{'CPU busy %':>12}{'CPU/GB x none':>20}"
             f"{'coverage %':>12}{'copies/s':>12}"]
    for name, c in t2["configs"].items():
        cov = c.get("coverage")
        cov_s = "-" if not cov or cov.get("median") is None else f"{100 * cov['median']:.1f}"
        busy = c["cpu_busy"]["median"]
        rate = (c.get("copies_per_s") or {}).get("median")
        lines.append(f"  {name:<9}{fmt_value(c['gbps'], '', 2):>24}{fmt_ratio(c['ratio']):>20}"
                     f"{'-' if busy is None else f'{100 * busy:.0f}':>12}{fmt_ratio(c['cpu_per_gb_ratio']):>20}"
                     f"{cov_s:>12}{'-' if rate is None else f'{rate / 1000:.0f}k':>12}")
    mirror, mirred = (t2["configs"].get(c, {}).get("gbps", {}).get("median") for c in ("mirror", "mirred"))
    if mirror and mirred:
        lines.append(f"  mirror (bpftap) / mirred (kernel VXLAN device), same run: {mirror / mirred:.2f}x")
    return lines


def tier3_lines(t3: dict[str, Any]) -> list[str]:
    lines = ["tier 3: loss of originals % / copies delivered % (median of "
             f"{t3['reps']}, {t3['seconds_per_point']:g} s per point) vs offered load as % of C"]
    for payload, cap in t3["capacity"].items():
        lines.append(f"  {payload} B payload: C = {cap['pps']:.0f} pps")
        configs = list(t3["table"])
        lines.append(f"    {'% of C':<7}{'band':<8}" + "".join(f"{c:>20}" for c in configs)
                     + f"{'reference (not mirr. / mirr. / copies missing)':>48}")
        for util in UTILISATIONS:
            key = f"{util:.2f}"
            cells = []
            for c in configs:
                row = t3["table"][c][payload][key]
                loss = fmt_pct(row["loss_pct"]["median"], row["resolution_pct"])
                copies = row["copies_pct"]["median"]
                cells.append(loss + ("" if c in ("none", "nomatch") or copies is None else f" / {copies:.1f}"))
            band = band_of(util)
            ref = " / ".join(REFERENCE[k][band] for k in ("not mirrored", "mirrored", "copies missing"))
            lines.append(f"    {100 * util:<7.0f}{band:<8}" + "".join(f"{c:>20}" for c in cells) + f"{ref:>48}")
        if "links" in t3["table"]:
            rows = [(u, t3["table"]["links"][payload][f"{u:.2f}"]) for u in UTILISATIONS]

            def med(row: dict[str, Any], key: str) -> str:
                v = row.get(key, {}).get("median")
                return "-" if v is None else f"{v:.0f} %"

            lines.append("    links: copies filled the room originals left (link rate - originals) / the room "
                         "links: allows (rate less headroom, less originals): "
                         + ", ".join(f"{100 * u:.0f} % of C: {med(r, 'room_fill_pct')} / {med(r, 'allowed_fill_pct')}"
                                     for u, r in rows))
            lines.append("    copies that cannot fit the link (floor of copies missing, no headroom / 5 % headroom): "
                         + ", ".join(f"{100 * u:.0f} % of C: {med(r, 'missing_floor_pct')} / "
                                     f"{med(r, 'missing_floor_headroom_pct')}" for u, r in rows))
        res = t3["table"][configs[0]][payload][f"{UTILISATIONS[0]:.2f}"]["resolution_pct"]
        if res:
            lines.append(f"    one lost packet at 50 % of C = {res:.4f} %; '< 0.01 %' with >= 100 lost packets "
                         "of evidence would need 10^6 packets per point")
    return lines


def tier4_lines(t4: dict[str, Any]) -> list[str]:
    lines = ["tier 4: agent memory",
             f"  {'rules':>7}{'RSS MiB':>10}{'x':>7}{'maps MiB':>10}{'x':>7}{'progs KiB':>11}{'start s':>9}"]
    for r in t4["rows"]:
        lines.append(f"  {r['rules']:>7}{r['rss_kb'] / 1024:>10.1f}{r['rss_ratio']:>7.2f}"
                     f"{r['maps_memlock'] / 2**20:>10.2f}{r['maps_ratio']:>7.2f}{r['progs_memlock'] / 1024:>11.0f}"
                     f"{r['start_s']:>9.1f}")
    return lines


def format_report(res: dict[str, Any]) -> str:
    m = res["meta"]
    dirty = " (dirty tree)" if m.get("dirty") else ""
    lines = [f"bpftap bench on {m['host']}: kernel {m['uname_r']}, {m['cpu_model']} x {m['ncpus']}, "
             f"bpf_jit_enable {m['bpf_jit_enable']}, {' '.join(m['mitigations_cmdline'])}",
             f"commit {m.get('commit')}{dirty}; {m.get('duration_s', 0):.0f} s; steal "
             f"{100 * m.get('steal', 0):.2f} %; load at start {m.get('loadavg_start', '?')}"]
    for key, fn in (("tier1", tier1_lines), ("tier2", tier2_lines), ("tier3", tier3_lines), ("tier4", tier4_lines)):
        if key in res:
            lines.append("")
            lines += fn(res[key])
    for key, err in res.get("errors", {}).items():
        lines.append(f"\n{key}: FAILED: {err}")
    return "\n".join(lines)
