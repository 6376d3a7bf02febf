"""`bpftap demo`: the whole path on the built-in lab, start to finish, with a report.

Builds the lab (source host, tapped host that routes to a destination host,
collector host), runs `bpftap run` on the tapped host and `bpftap collect`
on the collector host, sends real traffic (ping over IPv4 and IPv6, a UDP
flow, an iperf3 TCP flow), then prints what was mirrored: counters per rule
and per session, the collector's summary, and the first decoded packets.
Everything it made is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bpftap.errors import BpftapError
from bpftap.lab import Lab
from bpftap.tunnels.vxlan import VXLAN_PORT

BPFTAP = [sys.executable, "-m", "bpftap.cli"]

CONFIG = """\
# bpftap demo: mirror the tapped host's link to the source host (tap eth0)
sources:
  - interface: eth0
    direction: both
sessions:
  - name: ids
    tunnel: vxlan
    remote: {col4}
    vni: 42
  - name: ids6
    tunnel: vxlan
    remote: {col6}
    vni: 43
rules:
  - number: 100          # skip wins over the later rule 300
    action: skip
    protocol: udp
    dst_ports: 5005
  - number: 200
    protocol: icmp
    sessions: [ids]
  - number: 210
    protocol: icmpv6
    sessions: [ids6]
  - number: 300
    protocol: udp
    dst_ports: 5000-5010
    sessions: [ids, ids6]
  - number: 400
    protocol: tcp
    dst_ports: 5201
    sessions: [ids]
"""

UDP_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(10):
    s.sendto(b"bpftap demo datagram %d" % i, (sys.argv[1], 5000 if i < 5 else 5005))
"""


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def wait_for_agent(lab: Lab, timeout: float = 15.0) -> dict[str, Any]:
    """Poll `bpftap status` in the tapped host until every session is resolved."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        res = lab.run(lab.tap, [*BPFTAP, "status", "--json"], check=False)
        if res.returncode == 0:
            data: dict[str, Any] = json.loads(res.stdout)
            if all(s["via"] for s in data["sessions"]):
                return data
        last = res.stderr.strip()
        time.sleep(0.3)
    raise BpftapError(f"the agent did not come up within {timeout:.0f} s: {last}")


def run_demo(keep: bool = False) -> int:
    """Run the demo; returns 0 when copies reached the collector."""
    work = Path(tempfile.mkdtemp(prefix="bpftap-demo-"))
    pcap = work / "mirror.pcapng"
    try:
        with Lab() as lab:
            step("lab")
            print(lab.describe())
            config = work / "bpftap.yaml"
            config.write_text(CONFIG.format(col4=lab.col.ip4, col6=lab.col.ip6))

            step(f"bpftap collect on the collector host, writing {pcap}")
            collector = lab.popen(
                lab.col, [*BPFTAP, "collect", "--listen", f"[::]:{VXLAN_PORT}", "--out", str(pcap)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            step(f"bpftap run -c {config} on the tapped host")
            agent_log = work / "agent.log"
            with agent_log.open("w") as log:
                agent = lab.popen(lab.tap, [*BPFTAP, "run", "-c", str(config)], stdout=log, stderr=log)
            wait_for_agent(lab)
            print(agent_log.read_text().rstrip())

            step("traffic from the source host to the destination host")
            iperf = lab.popen(lab.dst, ["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            for cmd in (
                ["ping", "-c", "3", "-i", "0.2", str(lab.dst.ip4)],
                ["ping", "-6", "-c", "3", "-i", "0.2", str(lab.dst.ip6)],
                [sys.executable, "-c", UDP_SENDER, str(lab.dst.ip4)],
                ["iperf3", "-c", str(lab.dst.ip4), "-p", "5201", "-t", "1", "-b", "20M"],
            ):
                print("$", " ".join(cmd[:2] if cmd[0] == sys.executable else cmd))
                res = lab.run(lab.src, cmd, check=False)
                tail = [ln for ln in res.stdout.splitlines() if ln.strip()][-2:]
                print("  " + "\n  ".join(tail) if tail else "  (sent)")
            iperf.wait(timeout=10)
            time.sleep(0.5)

            step("bpftap status on the tapped host")
            print(lab.run(lab.tap, [*BPFTAP, "status"]).stdout.rstrip())

            step("stopping the agent (SIGTERM) and the collector (SIGINT)")
            agent.terminate()
            agent_rc = agent.wait(timeout=10)
            collector.send_signal(2)
            out, _ = collector.communicate(timeout=10)
            print(out.rstrip())
            print(f"agent exited {agent_rc}")

            step("first decoded packets (tshark on the collector's pcapng)")
            shown = subprocess.run(
                ["tshark", "-r", str(pcap), "-c", "12"], capture_output=True, text=True, check=False
            ).stdout
            print(shown.rstrip() or "(none)")
        ok = bool(shown.strip()) and agent_rc == 0
        step("done: copies reached the collector" if ok else "FAILED: no copies reached the collector")
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1
