"""Tier 2: bulk TCP through the tapped host (the GSO path), four configurations interleaved.

iperf3 TCP from `src` to `dst` through `tap`, whose eth0 is the monitored
interface. Configurations, in this order every round:

- ``none``: no bpftap, no filter (the baseline);
- ``nomatch``: the agent attached (both directions) with 10 rules, none matching;
- ``mirror``: the agent mirroring every packet to the collector host over VXLAN;
- ``nochain``: ``mirror`` with `redirect_chain: false` (stage 2 hands the
  copies to the agent through a ring buffer; it sends them with AF_PACKET);
- ``mirred``: no agent; ``tc ... u32 match u32 0 0 action mirred egress mirror
  dev vxm0`` on eth0 ingress and egress, vxm0 being a kernel VXLAN device
  toward the collector host.

The receiver for copies is the kernel's own VXLAN device on `col` (vxc0):
its rx counters are what reached the collector. Coverage is the TCP payload
that arrived in copies over the payload iperf3 moved: copy bytes minus 52
header bytes (IPv4 20 + TCP with timestamps 32: the device's byte counter
starts after the Ethernet header) per copy, divided by iperf3's bytes
(approximate: options beyond timestamps count as payload, ACK copies count
as zero). CPU is the busy share of all CPUs from
/proc/stat during the run, and CPU-seconds per GB moved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bpftap.bench import labkit as K
from bpftap.bench.stats import cpu_busy, ratio_summary, rounds, summarize
from bpftap.bench.sysinfo import proc_stat_cpu
from bpftap.lab import Lab

CONFIGS = ("none", "nomatch", "mirror", "nochain", "mirred")
HEADER_BYTES = 52  # an Ethernet device's rx_bytes start at the IP header (earlier runs took 66: 99.0 % at most)


def one_run(lab: Lab, iperf: K.Iperf, seconds: float) -> dict[str, Any]:
    c0, x0, t0 = K.link_stats(lab, lab.col, "vxc0"), proc_stat_cpu(), time.monotonic()
    data = iperf.client([], seconds)
    c1, x1, t1 = K.link_stats(lab, lab.col, "vxc0"), proc_stat_cpu(), time.monotonic()
    end = data["end"]
    moved = int(end["sum_received"]["bytes"])
    copies = K.diff(c1, c0)
    cpu = cpu_busy(x0, x1)
    cpu_seconds = cpu["busy"] * (t1 - t0) * (os.cpu_count() or 1)
    payload = max(0, copies["rx_bytes"] - HEADER_BYTES * copies["rx_packets"])
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "bytes": moved,
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu_busy": cpu["busy"],
        "steal": cpu["steal"],
        "cpu_s_per_gb": cpu_seconds / (moved / 1e9) if moved else None,
        "copy_packets": copies["rx_packets"],
        "copies_per_s": copies["rx_packets"] / (t1 - t0),
        "copy_bytes": copies["rx_bytes"],
        "coverage": payload / moved if moved else None,
    }


def run_tier2(lab: Lab, reps: int = 3, seconds: float = 10.0, warmup_seconds: float = 3.0,
              log: Callable[[str], None] = print, underlay_mtu: int | None = None,
              link_offloads: bool = False, direction: str = "both") -> dict[str, Any]:
    """Interleaved rounds of the four configurations on a lab that is up.

    `underlay_mtu` sets the collector link's MTU first (both ends): at 1500,
    a copy's segments are cut smaller (bpftap's default `oversize: resegment`)
    and the kernel's VXLAN device behind mirred fragments its packets.
    `link_offloads` lets the collector link carry tunnel super-packets whole
    (a NIC with tunnel TSO); without, the kernel segments them before it.
    `direction` taps only the data (``ingress`` of the tapped interface) or
    only the ACKs (``egress``), for bpftap and mirred alike.
    """
    lab.collector_link_offloads(link_offloads)
    if underlay_mtu is not None:
        for host, dev in ((lab.tap, "eth2"), (lab.col, "eth0")):
            lab.run(host, ["ip", "link", "set", dev, "mtu", str(underlay_mtu)])
    mtu = int(lab.run(lab.col, ["cat", "/sys/class/net/eth0/mtu"]).stdout)
    K.add_vxlan(lab, lab.col, "vxc0", str(lab.col.ip4), "eth0")
    K.add_vxlan(lab, lab.tap, "vxm0", str(lab.tap.eth2.ip4), "eth2", remote=str(lab.col.ip4))
    iperf = K.Iperf(lab)
    runs: dict[str, list[dict[str, Any] | None]] = {c: [] for c in CONFIGS}  # one per round, None: failed
    agent_counters: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        warm = one_run(lab, iperf, warmup_seconds)
        log(f"  tier 2 warm-up (discarded): {warm['gbps']:.2f} Gbit/s")
        agent: K.BenchAgent | None = None
        for rnd, config in rounds(CONFIGS, reps, warmup=0):
            try:
                if config == "nomatch":
                    agent = K.BenchAgent(lab, K.agent_config(str(lab.col.ip4), "nomatch", direction=direction))
                elif config in ("mirror", "nochain"):
                    if agent is None:
                        agent = K.BenchAgent(lab, K.agent_config(str(lab.col.ip4), config, direction=direction))
                    else:
                        agent.reload(K.agent_config(str(lab.col.ip4), config, direction=direction))
                elif config == "mirred":
                    K.mirred_on(lab, lab.tap, "eth0", "vxm0", direction)
                result = one_run(lab, iperf, seconds)
                if config in ("mirror", "nochain") and agent is not None:
                    agent_counters.append({"config": config, **agent.status()["counters"]})
            except Exception as exc:  # noqa: BLE001 - keep the other configurations' runs
                errors.append(f"round {rnd + 1} {config}: {type(exc).__name__}: {str(exc)[-600:]}")
                log(f"  tier 2 round {rnd + 1}/{reps} {config:<8} FAILED: {errors[-1][:300]}")
                runs[config].append(None)
                continue
            finally:
                if config == "mirred":
                    K.mirred_off(lab, lab.tap, "eth0")
                if config in ("mirror", "nochain") and agent is not None:
                    agent.stop()
                    agent = None
            runs[config].append(result)
            cov = "-" if result["coverage"] is None else f"{100 * result['coverage']:.1f} %"
            log(f"  tier 2 round {rnd + 1}/{reps} {config:<8} {result['gbps']:6.2f} Gbit/s  "
                f"cpu {100 * result['cpu_busy']:5.1f} %  coverage {cov}")
    finally:
        iperf.close()

    def col(config: str, key: str) -> list[Any]:
        return [r[key] if r else None for r in runs[config]]

    base, base_cpu = col("none", "gbps"), col("none", "cpu_s_per_gb")
    out: dict[str, Any] = {"seconds": seconds, "reps": reps, "underlay_mtu": mtu, "link_offloads": link_offloads,
                           "direction": direction, "configs": {},
                           "agent_counters": agent_counters, "warmup": warm, "errors": errors}
    for config in CONFIGS:
        gbps = col(config, "gbps")
        out["configs"][config] = {
            "gbps": summarize(gbps),
            "ratio": ratio_summary(gbps, base),
            "cpu_busy": summarize(col(config, "cpu_busy")),
            "cpu_s_per_gb": summarize(col(config, "cpu_s_per_gb")),
            "cpu_per_gb_ratio": ratio_summary(col(config, "cpu_s_per_gb"), base_cpu),
            # the ACKs alone carry no payload to cover
            "coverage": summarize(col(config, "coverage"))
            if config in ("mirror", "nochain", "mirred") and direction != "egress" else None,
            "copies_per_s": summarize(col(config, "copies_per_s")) if config in ("mirror", "nochain", "mirred")
            else None,
            "runs": runs[config],
        }
    return out
