"""Lab plumbing shared by the live tiers: the agent, the kernel's VXLAN and mirred, iperf3, counters.

Everything runs inside the namespaces of a `bpftap.lab.Lab`; nothing is
attached to, or sent from, an interface of the root namespace.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bpftap.demo import wait_for_agent
from bpftap.errors import BpftapError
from bpftap.lab import Host, Lab
from bpftap.tunnels.vxlan import VXLAN_PORT

BPFTAP = [sys.executable, "-m", "bpftap.cli"]
VNI = 42
IPERF_PORT = 5201


def agent_config(remote: str, kind: str, n_rules: int = 10, capacity: int = 0,
                 direction: str = "both") -> dict[str, Any]:
    """The agent's config for one bench configuration, as data.

    ``nomatch``: `n_rules` UDP rules for ports 6000.. that no bench traffic
    uses (every rule is checked, none matches). ``mirror``: one rule that
    matches every IP packet (protocol any, both directions) and feeds one
    VXLAN session to `remote`. ``nochain``: ``mirror`` with `redirect_chain: false`
    (the agent sends the copies from user space). ``links``: ``mirror`` with the tapped host's
    uplink eth1 a listed link of `capacity` bits/s. ``many``: `n_rules` rules, the last one
    matching everything (the memory tier's full rule set). `direction`: which of eth0's
    directions are tapped (``both``, ``ingress``, ``egress``).
    """
    session = {"name": "ids", "tunnel": "vxlan", "remote": remote, "vni": VNI, "port": VXLAN_PORT}
    rules: list[dict[str, Any]]
    if kind == "nomatch":
        rules = [{"number": 900 + i, "protocol": "udp", "dst_ports": 6000 + i, "sessions": ["ids"]}
                 for i in range(n_rules)]
    elif kind in ("mirror", "nochain", "links"):
        rules = [{"number": 100, "sessions": ["ids"]}]
    elif kind == "many":
        rules = [{"number": 1 + i, "protocol": "udp", "dst_ports": 6000 + (i % 50000), "sessions": ["ids"]}
                 for i in range(n_rules - 1)] + [{"number": n_rules + 1, "sessions": ["ids"]}]
    else:
        raise ValueError(f"unknown agent config kind {kind!r}")
    config = {"sources": [{"interface": "eth0", "direction": direction}], "sessions": [session], "rules": rules}
    if kind == "links":
        return {**config, "links": [{"interface": "eth1", "capacity": capacity}]}
    return {**config, "redirect_chain": False} if kind == "nochain" else config


class BenchAgent:
    """`bpftap run` on the lab's tapped host, reloadable by SIGHUP."""

    def __init__(self, lab: Lab, config: dict[str, Any]) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="bpftap-bench-"))
        self.path = self.dir / "bpftap.yaml"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = self.dir / "agent.log"
        with self.log.open("w") as out:
            self.proc = lab.popen(lab.tap, [*BPFTAP, "run", "-c", str(self.path)], stdout=out, stderr=out)
        try:
            self.pid = int(wait_for_agent(lab, timeout=30)["pid"])
        except BaseException:  # noqa: BLE001 - whatever went wrong (^C too), the agent must not outlive the bench
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise BpftapError(f"bench: the agent did not start:\n{self.log.read_text()[-2000:]}") from None

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.lab.run(self.lab.tap, [*BPFTAP, "status", "--json"]).stdout)
        return data

    def reload(self, config: dict[str, Any], timeout: float = 15.0) -> None:
        """Write `config`, SIGHUP, and wait until the agent reports exactly its rule numbers."""
        want = sorted(r["number"] for r in config["rules"])
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.status()
            links = [link["capacity"] for link in data.get("links", [])]
            if (sorted(r["number"] for r in data["rules"]) == want and all(s["via"] for s in data["sessions"])
                    and links == [link["capacity"] for link in config.get("links", [])]):
                return
            time.sleep(0.2)
        raise BpftapError(f"bench: the agent did not apply the new rules in {timeout:.0f} s:\n"
                          f"{self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 15 s); its directory goes if it exited 0, else stays for its log, named on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.returncode == 0:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"bench: the agent exited {self.proc.returncode}; its log: {self.log}", file=sys.stderr)
        return self.proc.returncode


def link_stats(lab: Lab, host: Host, ifname: str) -> dict[str, int]:
    """rx/tx packets, bytes and drops of one interface (``ip -s -j link``)."""
    data = json.loads(lab.run(host, ["ip", "-s", "-j", "link", "show", "dev", ifname]).stdout)[0]["stats64"]
    return {f"{d}_{k}": int(data[d][k]) for d in ("rx", "tx") for k in ("packets", "bytes", "dropped")}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def add_vxlan(lab: Lab, host: Host, name: str, local: str, dev: str, remote: str | None = None) -> None:
    """A kernel VXLAN device (VNI 42, port 4789), up; with no remote it receives from anyone."""
    cmd = ["ip", "link", "add", name, "type", "vxlan", "id", str(VNI), "dstport", str(VXLAN_PORT),
           "local", local, "dev", dev, "nolearning"]
    if remote:
        cmd += ["remote", remote]
    lab.run(host, cmd)
    lab.run(host, ["ip", "link", "set", name, "up"])


def copy_counter(lab: Lab, host: Host, dev: str, inner_dst: str, proto: int) -> None:
    """Count decapsulated copies of one flow on `dev`'s ingress.

    This kernel has no gact and no loadable modules, so the counting action
    is a mirred redirect to a veth whose peer is down (`cnt0`, the copy is
    dropped there); the action's own statistics are the count.
    """
    lab.run(host, ["ip", "link", "add", "cnt0", "type", "veth", "peer", "name", "cnt1"])
    lab.run(host, ["ip", "link", "set", "cnt0", "up"])
    lab.run(host, ["tc", "qdisc", "add", "dev", dev, "clsact"])
    lab.run(host, ["tc", "filter", "add", "dev", dev, "ingress", "protocol", "ip", "prio", "1", "u32",
                   "match", "ip", "dst", f"{inner_dst}/32", "match", "ip", "protocol", str(proto), "0xff",
                   "action", "mirred", "egress", "redirect", "dev", "cnt0"])


def copy_count(lab: Lab, host: Host, dev: str) -> int:
    """Packets `copy_counter`'s filter has seen so far."""
    data = json.loads(lab.run(host, ["tc", "-s", "-j", "filter", "show", "dev", dev, "ingress"]).stdout)
    for entry in data:
        for action in entry.get("options", {}).get("actions", []):
            return int(action.get("stats", {}).get("packets", 0))
    return 0


def mirred_on(lab: Lab, host: Host, dev: str, to: str, direction: str = "both") -> None:
    """The kernel's way: `tc ... u32 match u32 0 0 action mirred egress mirror dev <to>` on `direction`'s hooks."""
    lab.run(host, ["tc", "qdisc", "add", "dev", dev, "clsact"])
    for hook in ("ingress", "egress") if direction == "both" else (direction,):
        lab.run(host, ["tc", "filter", "add", "dev", dev, hook, "protocol", "all", "prio", "1", "u32",
                       "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", to])


def mirred_off(lab: Lab, host: Host, dev: str) -> None:
    lab.run(host, ["tc", "qdisc", "del", "dev", dev, "clsact"], check=False)


def qdisc_stats(lab: Lab, host: Host, dev: str) -> dict[str, int]:
    """Root qdisc's sent packets, drops and overlimits."""
    data = json.loads(lab.run(host, ["tc", "-s", "-j", "qdisc", "show", "dev", dev]).stdout)
    root = next((q for q in data if q.get("root")), data[0] if data else {})
    return {k: int(root.get(k, 0)) for k in ("packets", "drops", "overlimits", "requeues")}


def softnet_drops() -> int:
    """Backlog drops summed over CPUs (/proc/net/softnet_stat column 2, hex)."""
    total = 0
    for line in Path("/proc/net/softnet_stat").read_text().splitlines():
        cols = line.split()
        if len(cols) > 1:
            total += int(cols[1], 16)
    return total


class Iperf:
    """One iperf3 server on the destination host for a whole tier; clients from the source host."""

    def __init__(self, lab: Lab, cpu: int | None = None) -> None:
        """`cpu`: pin the server there (taskset), else leave it to the scheduler."""
        self.lab = lab
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.server = lab.popen(lab.dst, [*pin, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def client(self, args: list[str], seconds: float) -> dict[str, Any]:
        """Run one client test (JSON); retries twice when the server is still busy with the last one."""
        cmd = ["iperf3", "-c", str(self.lab.dst.ip4), "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J", *args]
        last = ""
        for _ in range(3):
            res = self.lab.run(self.lab.src, cmd, check=False, timeout=seconds + 30)
            try:
                data: dict[str, Any] = json.loads(res.stdout)
            except json.JSONDecodeError:
                data = {"error": res.stderr.strip() or res.stdout[-300:]}
            if "error" not in data:
                return data
            last = str(data["error"])
            time.sleep(1.0)
        raise BpftapError(f"bench: iperf3 failed: {last}")

    def close(self) -> None:
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.server.kill()
