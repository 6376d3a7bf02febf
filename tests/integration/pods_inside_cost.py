"""What `attach: inside` costs against host-side attach: iperf3 through the CNI-like lab, same run, interleaved.

    .venv/bin/python -m tests.integration.pods_inside_cost [--seconds 5] [--rounds 3]

As root. One PodLab (test_pods_inside's: an outside host behind the uplink,
cni_redirect delivering the pod's ingress with bpf_redirect_peer and its
egress with bpf_redirect); for each round and each of `none` (no agent),
`host` and `inside`, one TCP flow outside -> pod (the pod's ingress) and one
pod -> outside (its egress, iperf3 -R), every packet matched by one rule to
one VXLAN collector. Prints Gbit/s per flow, the copies the agent sent (in
wire frames) and how many of them were super-packets encapsulated whole.
A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from typing import Any

from .podlab import PodLab
from .test_pods_inside import agent, cni, status

PORT = 5299


def flow(lab: PodLab, reverse: bool, seconds: int) -> float:
    server = lab.popen(lab.ns("web-1"), ["iperf3", "-s", "-1", "-p", str(PORT)], stdout=subprocess.DEVNULL)
    time.sleep(0.4)
    try:
        out = lab.run(lab.ext, ["iperf3", "-c", "198.18.10.1", "-p", str(PORT), "-t", str(seconds), "-J",
                                *(["-R"] if reverse else [])], timeout=seconds + 30)
        data: dict[str, Any] = json.loads(out.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    copies: dict[str, list[int]] = {}
    with PodLab() as lab:
        lab.add_pod("web-1")
        lab.add_outside()
        with cni(lab):
            for _ in range(args.rounds):
                for mode in ("none", "host", "inside"):
                    if mode == "none":
                        got = {"ingress": flow(lab, False, args.seconds), "egress": flow(lab, True, args.seconds)}
                        sent = 0
                    else:
                        with agent(lab, "inside" if mode == "inside" else ""):
                            st = status(lab)
                            before = sum(s["packets"] for s in st["sessions"])
                            whole = st["counters"].get("gso_sent", 0)
                            got = {"ingress": flow(lab, False, args.seconds), "egress": flow(lab, True, args.seconds)}
                            st = status(lab)
                            sent = sum(s["packets"] for s in st["sessions"]) - before
                            whole = st["counters"].get("gso_sent", 0) - whole
                            print(f"  {mode}: {whole} copies of super-packets encapsulated whole", flush=True)
                    for way, gbps in got.items():
                        results.setdefault(mode, {}).setdefault(way, []).append(gbps)
                    copies.setdefault(mode, []).append(sent)
                    print(mode, {k: round(v, 2) for k, v in got.items()}, "copies", sent, flush=True)
    print(f"\nmedian of {args.rounds} rounds, {args.seconds} s per flow (Gbit/s; ratio to no agent):")
    base = {way: statistics.median(v) for way, v in results["none"].items()}
    for mode, ways in results.items():
        line = ", ".join(f"{way} {statistics.median(v):.2f} ({statistics.median(v) / base[way]:.2f}x)"
                         for way, v in ways.items())
        print(f"  {mode:7s} {line}; copies per round {statistics.median(copies[mode]):.0f}")


if __name__ == "__main__":
    main()
