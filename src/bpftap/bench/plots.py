"""PNG plots of a `bpftap bench` result (matplotlib, the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpftap.bench.stats import UTILISATIONS

COLOURS = {"none": "tab:gray", "nomatch": "tab:blue", "mirror": "tab:green", "nochain": "tab:olive",
           "mirred": "tab:red"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(s: dict[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    med = (s.get("median") or 0) * scale
    return med, [med - (s.get("min") or 0) * scale, (s.get("max") or 0) * scale - med]


def plot_tier1(t1: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey=True)
    for ax, (fam, size) in zip(axes.flat, [(f, s) for f in (4, 6) for s in (64, 1500)], strict=True):
        rows = [r for r in t1["rows"] if r["family"] == fam and r["size"] == size and r["ns"]["n"]]
        labels, vals, errs, colours = [], [], [], []
        for r in rows:
            label = {"empty": "empty", "empty1": "empty r=1", "nomatch": f"no match {r.get('rules')}",
                     "match": f"match {r.get('rules')}", "encap": f"encap {r.get('sessions')} sess",
                     "link": "original, listed link", "nomatch-filters": f"no match {r.get('rules')}, filters",
                     "filter": f"filters run {r.get('rules')}"}[r["kind"]]
            med, err = _err(r["ns"])
            labels.append(label)
            vals.append(med)
            errs.append(err)
            colours.append({"empty": "tab:gray", "empty1": "tab:gray", "nomatch": "tab:blue", "match": "tab:green",
                            "encap": "tab:orange", "link": "tab:purple", "nomatch-filters": "tab:cyan",
                            "filter": "tab:brown"}[r["kind"]] if not r.get("problem") else "tab:red")
        x = range(len(vals))
        ax.bar(x, vals, yerr=list(zip(*errs, strict=True)) if errs else None, color=colours, capsize=2)
        ax.set_xticks(list(x), labels, fontsize=7, rotation=60, ha="right")
        ax.set_title(f"IPv{fam}, {size} B")
        ax.set_yscale("log")
        ax.set_ylabel("ns per packet (median, min-max)")
    fig.suptitle(title + "\ntier 1: BPF_PROG_TEST_RUN on CPU 1 (red: unexpected verdict, not valid)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_tier2(t2: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(t2["configs"])
    for ax, key, label, scale in ((a1, "ratio", "throughput x no bpftap", 1.0),
                                  (a2, "coverage", "payload that reached the collector (%)", 100.0)):
        vals, errs = [], []
        for n in names:
            s = t2["configs"][n].get(key) or {}
            med, err = _err(s, scale) if s.get("median") is not None else (0.0, [0.0, 0.0])
            vals.append(med)
            errs.append(err)
        ax.bar(names, vals, yerr=list(zip(*errs, strict=True)), color=[COLOURS.get(n, "k") for n in names], capsize=3)
        ax.set_ylabel(label)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}" if scale == 1 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(title + f"\ntier 2: bulk TCP, iperf3 {t2['seconds']:g} s x {t2['reps']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_tier3(t3: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    payloads = list(t3["capacity"])
    fig, axes = plt.subplots(2, len(payloads), figsize=(6 * len(payloads), 8), squeeze=False)
    xs = [100 * u for u in UTILISATIONS]
    for col, payload in enumerate(payloads):
        for row, (key, label) in enumerate((("loss_pct", "originals lost (%)"),
                                            ("copies_pct", "copies delivered (% of originals sent)"))):
            ax = axes[row][col]
            for config, by_payload in t3["table"].items():
                if key == "copies_pct" and config in ("none", "nomatch"):
                    continue
                pts = [by_payload[payload][f"{u:.2f}"][key] for u in UTILISATIONS]
                med = [p["median"] if p["median"] is not None else float("nan") for p in pts]
                lo = [p["min"] if p["min"] is not None else float("nan") for p in pts]
                hi = [p["max"] if p["max"] is not None else float("nan") for p in pts]
                ax.plot(xs, med, "o-", label=config, color=COLOURS.get(config))
                ax.fill_between(xs, lo, hi, alpha=0.2, color=COLOURS.get(config))
            if key == "loss_pct":
                ax.set_yscale("symlog", linthresh=0.01)
                ax.axhline(0.01, color="k", lw=0.5, ls=":")
            ax.set_xlabel("offered originals, % of baseline capacity C")
            ax.set_ylabel(label)
            ax.set_title(f"{payload} B UDP payload, C = {t3['capacity'][payload]['pps']:.0f} pps")
            ax.legend(fontsize=8)
    fig.suptitle(title + "\ntier 3: tbf-shaped uplink shared by originals and copies", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plots(res: dict[str, Any], stem: Path) -> list[Path]:
    """One PNG per tier present; returns the paths written."""
    m = res["meta"]
    title = f"bpftap bench {stem.name}: {m['uname_r']}, commit {str(m.get('commit'))[:12]}" + (
        " (dirty)" if m.get("dirty") else "")
    done = []
    for key, fn in (("tier1", plot_tier1), ("tier2", plot_tier2), ("tier3", plot_tier3)):
        if key in res:
            path = stem.with_name(f"{stem.name}-{key}.png")
            fn(res[key], path, title)
            done.append(path)
    return done
