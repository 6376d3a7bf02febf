"""What a benchmark result must say about the machine and the tree it measured."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def _read(path: str | Path, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def proc_stat_cpu() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat as jiffies (user nice system idle iowait irq softirq steal ...)."""
    for line in _read("/proc/stat").splitlines():
        if line.startswith("cpu "):
            return [int(x) for x in line.split()[1:]]
    return [0] * 10


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_state() -> dict[str, Any]:
    """The commit measured and whether the tree differed from it (dirty files listed)."""
    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    status = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status),
            "dirty_files": [ln[3:] for ln in status][:50]}


def tool_version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    return (res.stdout or res.stderr).splitlines()[0].strip() if (res.stdout or res.stderr) else "unknown"


def machine() -> dict[str, Any]:
    """uname, CPU, JIT, mitigations, load: what the protocol says to record."""
    vuln_dir = Path("/sys/devices/system/cpu/vulnerabilities")
    vulns = {p.name: _read(p) for p in sorted(vuln_dir.iterdir())} if vuln_dir.is_dir() else {}
    cmdline = _read("/proc/cmdline").split()
    return {
        "host": socket.gethostname(),
        "uname_r": platform.release(),
        "uname": " ".join(platform.uname()),
        "cpu_model": cpu_model(),
        "ncpus": os.cpu_count(),
        "bpf_jit_enable": _read("/proc/sys/net/core/bpf_jit_enable", "?"),
        "bpf_jit_harden": _read("/proc/sys/net/core/bpf_jit_harden", "?"),
        "mitigations_cmdline": [a for a in cmdline if a.startswith("mitigations=")] or ["(default)"],
        "vulnerabilities": vulns,
        "loadavg_start": _read("/proc/loadavg"),
        "iperf3": tool_version(["iperf3", "--version"]),
        "bpftool": tool_version(["bpftool", "version"]),
        "time_unix": time.time(),
    }


def rps_masks(run: Any, host: Any, ifaces: list[str]) -> dict[str, str]:
    """rps_cpus of each interface of a lab host (`run` is Lab.run); 0 means RPS off."""
    out = {}
    for name in ifaces:
        res = run(host, ["sh", "-c", f"cat /sys/class/net/{name}/queues/rx-*/rps_cpus"], check=False)
        out[name] = ",".join(res.stdout.split()) or "?"
    return out
