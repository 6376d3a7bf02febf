"""Tier 4: the agent's memory with a small and a full rule set.

The daemon's RSS (VmRSS, VmHWM from /proc/PID/status) and the kernel memory
of every BPF map and program it holds: each of its ``anon_inode:bpf-map`` and
``bpf-prog`` fds, read from /proc/PID/fdinfo (``memlock``), with map names from
``bpftool -j map show id``. Ratios are to the 10-rule agent of the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpftap.bench import labkit as K
from bpftap.lab import Lab


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def bpf_fds(pid: int) -> dict[str, list[dict[str, Any]]]:
    """Every BPF map and program the process holds, from fdinfo (one entry per object id)."""
    found: dict[str, dict[int, dict[str, Any]]] = {"maps": {}, "progs": {}}
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        kind = "maps" if target == "anon_inode:bpf-map" else "progs" if target == "anon_inode:bpf-prog" else None
        if kind is None:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        oid = int(fields.get("map_id" if kind == "maps" else "prog_id", -1))
        entry = {"id": oid, "memlock": int(fields.get("memlock", 0))}
        if kind == "maps":
            entry.update(type=int(fields.get("map_type", 0)), max_entries=int(fields.get("max_entries", 0)),
                         value_size=int(fields.get("value_size", 0)))
        found[kind][oid] = entry
    for entry in found["maps"].values():
        res = subprocess.run(["bpftool", "-j", "map", "show", "id", str(entry["id"])], capture_output=True,
                             text=True, timeout=10, check=False)
        if res.returncode == 0:
            entry["name"] = json.loads(res.stdout).get("name", "?")
    return {k: sorted(v.values(), key=lambda e: -e["memlock"]) for k, v in found.items()}


def measure_agent(lab: Lab, n_rules: int) -> dict[str, Any]:
    """Start an agent with `n_rules` rules (the last one matching), measure it, stop it."""
    t0 = time.monotonic()
    agent = K.BenchAgent(lab, K.agent_config(str(lab.col.ip4), "many" if n_rules > 1 else "mirror", n_rules))
    started = time.monotonic() - t0
    try:
        time.sleep(1.0)  # one refresh cycle
        kb = _status_kb(agent.pid)
        fds = bpf_fds(agent.pid)
    finally:
        agent.stop()
    return {
        "rules": n_rules,
        "start_s": started,
        "rss_kb": kb.get("VmRSS"),
        "hwm_kb": kb.get("VmHWM"),
        "maps_memlock": sum(m["memlock"] for m in fds["maps"]),
        "progs_memlock": sum(p["memlock"] for p in fds["progs"]),
        "maps": fds["maps"],
        "progs": fds["progs"],
    }


def run_tier4(lab: Lab, rule_counts: list[int], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Memory at each rule count (the first is the baseline of the ratios)."""
    rows = []
    for n in rule_counts:
        row = measure_agent(lab, n)
        rows.append(row)
        log(f"  tier 4 {n:>6} rules: RSS {row['rss_kb'] / 1024:.1f} MiB, maps {row['maps_memlock'] / 2**20:.2f} MiB, "
            f"progs {row['progs_memlock'] / 1024:.0f} KiB, start {row['start_s']:.1f} s")
    base = rows[0]
    for row in rows:
        row["rss_ratio"] = row["rss_kb"] / base["rss_kb"] if base["rss_kb"] else None
        row["maps_ratio"] = row["maps_memlock"] / base["maps_memlock"] if base["maps_memlock"] else None
    return {"rows": rows, "method": "VmRSS/VmHWM of the agent; memlock of each BPF map and program fd it holds "
                                    "(/proc/PID/fdinfo), one sample 1 s after the agent reported ready"}
