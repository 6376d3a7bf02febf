"""Tier 3: loss of originals and delivery of copies against channel utilisation.

The channel is explicit: a tbf on the tapped host's uplink to `dst` (tap
eth1), rate R = NOMINAL_PPS frames of the point's size per second. The
copies go to a kernel VXLAN device on `dst` itself, so originals and copies
share that uplink, as copies share a node's NIC. A u32 filter on that
device counts the decapsulated copies of the test flow.

Generator: iperf3 -u -w 4M --udp-counters-64bit, UDP payload 64 or 1400
bytes (frames of 106 and 1442 bytes), pinned to CPU 0 (-A 0); the tapped
host's eth0 steers its receive work to CPU 1 (RPS mask 2). Without that
split the sender's own CPU runs the whole path and a throttled tbf slows
the sender down instead of dropping: no loss at any load (closed loop).

First the capacity C of the baseline (no bpftap): a short bisection for
the highest rate with < 0.01 % loss. Then each configuration (none,
nomatch, mirror, links (mirror with tap eth1 a listed link, the tbf's rate
its capacity), nochain (`redirect_chain: false`), mirred, interleaved per
round) is offered 50..95 % of C.
Original loss comes from iperf3's sequence numbers; copies delivered are
counted copies over originals sent, counted until no more arrive (so a
point never counts the previous point's late copies: with `redirect_chain:
false` they wait in the agent's queue).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bpftap.bench import labkit as K
from bpftap.bench.stats import UTILISATIONS, cpu_busy, loss_resolution, settled, summarize
from bpftap.bench.sysinfo import proc_stat_cpu
from bpftap.config import Link
from bpftap.lab import Lab

CONFIGS = ("none", "nomatch", "mirror", "links", "nochain", "mirred")
PAYLOADS = (64, 1400)
NOMINAL_PPS = 40_000
HEADERS = 42  # Ethernet 14 + IPv4 20 + UDP 8: tbf counts the frame
VXLAN_HEADERS = 50  # a copy's outer Ethernet, IPv4, UDP and VXLAN
LOSS_OK = 0.01  # % loss that still counts as lossless for C


def setup(lab: Lab) -> None:
    """RPS on the monitored interface, the copy receiver on dst, mirred's VXLAN device on tap."""
    lab.run(lab.tap, ["sh", "-c", "echo 2 > /sys/class/net/eth0/queues/rx-0/rps_cpus"])
    K.add_vxlan(lab, lab.dst, "vxr0", str(lab.dst.ip4), "eth0")
    K.copy_counter(lab, lab.dst, "vxr0", str(lab.dst.ip4), 17)
    K.add_vxlan(lab, lab.tap, "vxm1", str(lab.tap.eth1.ip4), "eth1", remote=str(lab.dst.ip4))


def shape(lab: Lab, payload: int) -> int:
    """tbf on tap eth1 for `payload`-byte datagrams; returns the rate in bit/s."""
    rate = NOMINAL_PPS * (payload + HEADERS) * 8
    burst = max(rate // 8 // 200, 3000)  # 5 ms of tokens
    lab.run(lab.tap, ["tc", "qdisc", "replace", "dev", "eth1", "root", "tbf", "rate", f"{rate}bit",
                      "burst", str(burst), "latency", "20ms"])
    return rate


def point(lab: Lab, iperf: K.Iperf, payload: int, pps: float, seconds: float) -> dict[str, Any]:
    """One offered load: originals lost, copies delivered, and where drops happened."""
    q0, c0, s0, x0 = (K.qdisc_stats(lab, lab.tap, "eth1"), K.copy_count(lab, lab.dst, "vxr0"),
                      K.softnet_drops(), proc_stat_cpu())
    t0 = time.monotonic()
    data = iperf.client(["-u", "-l", str(payload), "-b", str(int(pps * payload * 8)), "-w", "4M",
                         "--udp-counters-64bit", "-A", "0"], seconds)
    t1 = time.monotonic()
    q1, s1, x1 = K.qdisc_stats(lab, lab.tap, "eth1"), K.softnet_drops(), proc_stat_cpu()
    c1 = settled(lambda: K.copy_count(lab, lab.dst, "vxr0"))  # this point's copies still on their way
    s = data["end"]["sum"]
    sent, lost = int(s.get("packets", 0)), int(s.get("lost_packets", 0))
    cpu = cpu_busy(x0, x1)
    busy_ns = cpu["busy"] * (t1 - t0) * (os.cpu_count() or 1) * 1e9
    return {
        "target_pps": pps,
        "offered_pps": sent / seconds,
        "sent": sent,
        "lost": lost,
        "loss_pct": 100.0 * lost / sent if sent else None,
        "copies": c1 - c0,
        "copies_pct": 100.0 * (c1 - c0) / sent if sent else None,
        "tbf_drops": q1["drops"] - q0["drops"],
        "backlog_drops": s1 - s0,
        "cpu_busy": cpu["busy"],
        "steal": cpu["steal"],
        "cpu_ns_per_packet": busy_ns / sent if sent else None,
    }


def room_fill(p: dict[str, Any], payload: int, rate: int, seconds: float, headroom: float = 0.0) -> float | None:
    """Copies delivered as % of the room the originals left on the link: its rate, less `headroom`
    percent of it, less the originals' offered bits. None where there is no room."""
    room = rate * (1 - headroom / 100) - p["offered_pps"] * (payload + HEADERS) * 8
    if p["copies"] is None or room <= 0:
        return None
    fill: float = 100.0 * p["copies"] * (payload + HEADERS + VXLAN_HEADERS) * 8 / seconds / room
    return fill


def missing_floor(p: dict[str, Any], payload: int, rate: int, headroom: float = 0.0) -> float:
    """The least % of copies that must go missing: the copies of every original need more than the
    room the originals leave on the link (its rate less `headroom` percent, less their bits)."""
    room = max(0.0, rate * (1 - headroom / 100) - p["offered_pps"] * (payload + HEADERS) * 8)
    need = p["offered_pps"] * (payload + HEADERS + VXLAN_HEADERS) * 8
    return max(0.0, 100.0 * (1 - room / need)) if need else 0.0


def sweep(lab: Lab, iperf: K.Iperf, config: str, caps: dict[int, dict[str, Any]], seconds: float,
          pts: dict[str, Any], agent_counters: list[dict[str, Any]]) -> None:
    """One configuration over every payload and utilisation; its points go into `pts` only when all ran."""
    agent = None
    got: dict[int, dict[float, dict[str, Any]]] = {p: {} for p in PAYLOADS}
    try:
        if config in ("nomatch", "mirror", "nochain"):
            agent = K.BenchAgent(lab, K.agent_config(str(lab.dst.ip4), config))
        elif config == "links":  # the tbf's rate is the link's capacity: reloaded per payload below
            agent = K.BenchAgent(lab, K.agent_config(str(lab.dst.ip4), config, capacity=shape(lab, PAYLOADS[0])))
        elif config == "mirred":
            K.mirred_on(lab, lab.tap, "eth0", "vxm1")
        for payload in PAYLOADS:
            rate = shape(lab, payload)
            if config == "links" and agent is not None:
                agent.reload(K.agent_config(str(lab.dst.ip4), config, capacity=rate))
            for util in UTILISATIONS:
                got[payload][util] = point(lab, iperf, payload, util * caps[payload]["pps"], seconds)
        if agent is not None and config in ("mirror", "nochain", "links"):
            status = agent.status()
            agent_counters.append({"config": config, **status["counters"], "links": status["links"]})
    finally:
        if agent is not None:
            agent.stop()
        if config == "mirred":
            K.mirred_off(lab, lab.tap, "eth0")
    for payload, by_util in got.items():
        for util, p in by_util.items():
            pts[config][payload][util].append(p)


def capacity(lab: Lab, iperf: K.Iperf, payload: int, seconds: float, steps: int = 3,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Bisect the no-bpftap rate (pps) with < LOSS_OK % loss between 0.85 and 1.1 x nominal."""
    lo, hi = 0.85 * NOMINAL_PPS, 1.10 * NOMINAL_PPS
    probes = []
    first = point(lab, iperf, payload, lo, seconds)
    probes.append(first)
    while first["loss_pct"] is None or first["loss_pct"] >= LOSS_OK:  # the low end already loses
        hi, lo = lo, lo * 0.8
        first = point(lab, iperf, payload, lo, seconds)
        probes.append(first)
        if lo < 0.3 * NOMINAL_PPS:
            break
    for _ in range(steps):
        mid = (lo + hi) / 2
        p = point(lab, iperf, payload, mid, seconds)
        probes.append(p)
        if p["loss_pct"] is not None and p["loss_pct"] < LOSS_OK:
            lo = mid
        else:
            hi = mid
    log(f"  tier 3 capacity {payload} B: C = {lo:.0f} pps (tbf nominal {NOMINAL_PPS} pps, {len(probes)} probes)")
    return {"pps": lo, "nominal_pps": NOMINAL_PPS, "probes": probes}


def run_tier3(lab: Lab, reps: int = 3, seconds: float = 2.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Capacity, then the interleaved sweep of every configuration."""
    setup(lab)
    iperf = K.Iperf(lab, cpu=0)
    rates: dict[int, int] = {}
    caps: dict[int, dict[str, Any]] = {}
    pts: dict[str, dict[int, dict[float, list[dict[str, Any]]]]] = {
        c: {p: {u: [] for u in UTILISATIONS} for p in PAYLOADS} for c in CONFIGS}
    agent_counters: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        rates[PAYLOADS[0]] = shape(lab, PAYLOADS[0])
        warm = point(lab, iperf, PAYLOADS[0], 0.5 * NOMINAL_PPS, seconds)
        log(f"  tier 3 warm-up (discarded): {warm['offered_pps']:.0f} pps, loss {warm['loss_pct']:.3f} %")
        for payload in PAYLOADS:
            rates[payload] = shape(lab, payload)
            caps[payload] = capacity(lab, iperf, payload, seconds, log=log)
        for rnd in range(reps):
            for config in CONFIGS:
                try:
                    sweep(lab, iperf, config, caps, seconds, pts, agent_counters)
                except Exception as exc:  # noqa: BLE001 - keep the other configurations' points
                    errors.append(f"round {rnd + 1} {config}: {type(exc).__name__}: {str(exc)[-600:]}")
                    log(f"  tier 3 round {rnd + 1}/{reps} {config:<8} FAILED: {errors[-1][:300]}")
                    continue
                last = {pl: pts[config][pl][UTILISATIONS[-1]][-1] for pl in PAYLOADS}
                log(f"  tier 3 round {rnd + 1}/{reps} {config:<8} at {100 * UTILISATIONS[-1]:.0f} % of C: "
                    + ", ".join(f"{pl} B loss {v['loss_pct']:.3f} % copies {v['copies_pct']:.1f} %"
                                for pl, v in last.items()))
    finally:
        iperf.close()
        lab.run(lab.tap, ["tc", "qdisc", "del", "dev", "eth1", "root"], check=False)
    table: dict[str, Any] = {}
    for config in CONFIGS:
        table[config] = {}
        for payload in PAYLOADS:
            rows = {}
            for util in UTILISATIONS:
                runs = pts[config][payload][util]
                rows[f"{util:.2f}"] = {
                    "utilisation": util,
                    "loss_pct": summarize(r["loss_pct"] for r in runs),
                    "copies_pct": summarize(r["copies_pct"] for r in runs),
                    "room_fill_pct": summarize(room_fill(r, payload, rates[payload], seconds) for r in runs),
                    "allowed_fill_pct": summarize(room_fill(r, payload, rates[payload], seconds, Link.headroom)
                                                  for r in runs),
                    "missing_floor_pct": summarize(missing_floor(r, payload, rates[payload]) for r in runs),
                    "missing_floor_headroom_pct": summarize(missing_floor(r, payload, rates[payload], Link.headroom)
                                                            for r in runs),
                    "offered_pps": summarize(r["offered_pps"] for r in runs),
                    "tbf_drops": summarize(r["tbf_drops"] for r in runs),
                    "backlog_drops": summarize(r["backlog_drops"] for r in runs),
                    "cpu_ns_per_packet": summarize(r["cpu_ns_per_packet"] for r in runs),
                    "resolution_pct": loss_resolution(min(r["sent"] for r in runs)) if runs else None,
                    "n": len(runs),
                    "runs": runs,
                }
            table[config][str(payload)] = rows
    return {
        "generator": "iperf3 -u -w 4M --udp-counters-64bit -A 0 (client on CPU 0), RPS of tap eth0 to CPU 1",
        "channel": f"tbf on tap eth1, rate = {NOMINAL_PPS} frames/s of the point's size, burst 5 ms, latency 20 ms; "
                   "copies to a VXLAN device on dst share that link",
        "utilisation": "original offered bytes / C, C = capacity of the no-bpftap baseline",
        "seconds_per_point": seconds,
        "reps": reps,
        "rates_bit_s": {str(k): v for k, v in rates.items()},
        # with every packet mirrored the link carries originals + copies (VXLAN adds 50 B):
        # bytes on the link per original byte
        "mirror_link_factor": {str(p): round(1 + (p + HEADERS + VXLAN_HEADERS) / (p + HEADERS), 3) for p in PAYLOADS},
        "room_fill": "copies' bits delivered / (link rate - originals' offered bits); with `links:` at most "
                     "(room - headroom) / room: 5 % of the rate stays free",
        "allowed_fill": "copies' bits delivered / (link rate x (1 - headroom) - originals' offered bits): "
                        "the room `links:` lets copies take",
        "missing_floor": "the least % of copies that cannot fit: 100 x (1 - room / bits the copies of every "
                         "original need), room as in room_fill; missing_floor_headroom: as in allowed_fill",
        "capacity": {str(k): v for k, v in caps.items()},
        "warmup": warm,
        "table": table,
        "agent_counters": agent_counters,
        "errors": errors,
    }
