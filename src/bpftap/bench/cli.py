"""`bpftap bench`: every tier on the lab, one JSON result, PNG plots and a text table.

Tiers: 1 program cost (BPF_PROG_TEST_RUN), 2 bulk TCP, 3 loss against
channel utilisation, 4 agent memory. Every figure is a ratio to a baseline
measured in the same run. Needs root; creates and removes its own network
namespaces; never touches an interface of the root namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  bpftap bench                      all tiers (about 10 minutes), results in bench/results/
  bpftap bench --tiers 1            program cost only (under a minute)
  bpftap bench --quick --tiers 2,3  shorter points, for trying the instrument out
  bpftap bench --tiers 2 --link-offloads --direction ingress
                                    bulk TCP, only the data mirrored, collector link with tunnel TSO
"""


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure bpftap against baselines on the lab (needs root)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for the JSON and PNGs")
    p.add_argument("--tiers", default="1,2,3,4", help="comma-separated tiers to run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of tiers 2 and 3 (at least 3)")
    p.add_argument("--quick", action="store_true", help="short points (TCP 3 s, UDP 1 s): not for publishing")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--underlay-mtu", type=int, default=None, metavar="N",
                   help="tier 2: MTU of the link to the collector (default: the lab's 9000; 1500 makes "
                        "every full-size copy two outer fragments)")
    p.add_argument("--link-offloads", action="store_true",
                   help="tier 2: the collector link takes tunnel super-packets whole, as a NIC with tunnel TSO "
                        "and checksum offload (default: the kernel segments them before it, as for a NIC without)")
    p.add_argument("--direction", choices=("both", "ingress", "egress"), default="both",
                   help="tier 2: the tapped interface's directions mirrored, by bpftap and mirred alike "
                        "(ingress: the bulk data; egress: its ACKs; default both)")
    p.set_defaults(func=cmd_bench, unwind_on_sigterm=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from bpftap.errors import BpftapError

    if os.geteuid() != 0:
        raise BpftapError("bench needs root (BPF_PROG_TEST_RUN, network namespaces)")
    tiers = {int(t) for t in str(args.tiers).split(",") if t.strip()}
    if not tiers <= {1, 2, 3, 4}:
        raise BpftapError(f"--tiers: unknown tier in {args.tiers!r}; tiers are 1, 2, 3, 4")
    if args.reps < 3:
        raise BpftapError("--reps: at least 3 (the protocol reports median and spread of >= 3)")
    if args.underlay_mtu is not None and not 1280 <= args.underlay_mtu <= 9000:
        raise BpftapError(f"--underlay-mtu: {args.underlay_mtu} is not between 1280 and 9000")
    res = run_bench(tiers, args.reps, args.quick, args.underlay_mtu, args.link_offloads, args.direction)
    args.out.mkdir(parents=True, exist_ok=True)
    from bpftap.bench.report import format_report, result_stem

    stem = result_stem(args.out, res["meta"]["host"], res["meta"]["time_unix"])
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    written = [path]
    if not args.no_plots:
        try:
            from bpftap.bench.plots import write_plots

            written += write_plots(res, stem)
        except ImportError as exc:
            print(f"bpftap bench: no plots ({exc}); install the extra: pip install -e '.[bench]'", file=sys.stderr)
    print(format_report(res))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 1 if res.get("errors") else 0


def run_bench(tiers: set[int], reps: int, quick: bool, underlay_mtu: int | None = None,
              link_offloads: bool = False, direction: str = "both") -> dict[str, Any]:
    """Run the chosen tiers in order (1, 2, 4, 3); a tier that fails is recorded and the rest go on."""
    from bpftap import abi
    from bpftap.bench import sysinfo
    from bpftap.bench.stats import RULE_COUNTS_WANTED, cpu_busy
    from bpftap.lab import Lab

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    t0, stat0 = time.monotonic(), sysinfo.proc_stat_cpu()
    meta = {**sysinfo.machine(), **sysinfo.git_state(), "quick": quick, "tiers": sorted(tiers),
            "max_rules": abi.MAX_RULES, "ip_netns_before": sorted(_netns())}
    res: dict[str, Any] = {"schema": 1, "meta": meta}
    errors: dict[str, str] = {}

    def tier(name: str, fn: Any) -> None:
        start = time.monotonic()
        log(f"bench: {name} ...")
        try:
            res[name] = fn()
            res[name]["elapsed_s"] = time.monotonic() - start
        except Exception as exc:  # noqa: BLE001 - a failed tier must not lose the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(traceback.format_exc())
        log(f"bench: {name} done in {time.monotonic() - start:.0f} s")

    if 1 in tiers:
        from bpftap.bench.progcost import run_tier1

        tier("tier1", lambda: run_tier1(rounds=5, target_ms=20.0 if quick else 60.0))
    if tiers & {2, 4}:
        with Lab() as lab:
            meta["rps_masks"] = {"tap": sysinfo.rps_masks(lab.run, lab.tap, ["eth0", "eth1", "eth2"])}
            if 2 in tiers:
                from bpftap.bench.tcp import run_tier2

                tier("tier2", lambda: run_tier2(lab, reps, 3.0 if quick else 10.0, log=log,
                                                underlay_mtu=underlay_mtu, link_offloads=link_offloads,
                                                direction=direction))
            if 4 in tiers:
                from bpftap.bench.memory import run_tier4

                counts = sorted({10, min(RULE_COUNTS_WANTED[-1], abi.MAX_RULES), abi.MAX_RULES})
                tier("tier4", lambda: run_tier4(lab, counts, log=log))
    if 3 in tiers:
        from bpftap.bench.loss import run_tier3

        with Lab() as lab:
            tier("tier3", lambda: run_tier3(lab, reps, 1.0 if quick else 3.0, log=log))
            meta.setdefault("rps_masks", {})["tap (tier 3)"] = sysinfo.rps_masks(lab.run, lab.tap, ["eth0"])
    cpu = cpu_busy(stat0, sysinfo.proc_stat_cpu())
    meta.update(duration_s=time.monotonic() - t0, steal=cpu["steal"], busy=cpu["busy"],
                loadavg_end=Path("/proc/loadavg").read_text().strip(), ip_netns_after=sorted(_netns()))
    if errors:
        res["errors"] = errors
    return res


def _netns() -> list[str]:
    """Named network namespaces now (others' test namespaces show up here too)."""
    try:
        return [n.split()[0] for n in os.listdir("/run/netns")]
    except OSError:
        return []
