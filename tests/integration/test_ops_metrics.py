"""Issue 6 item 5: `bpftap run --metrics ADDR` in the lab, scraped from inside the tapped host's namespace.

The scrape is parsed with prometheus_client's own parser and every value is
compared with `bpftap status --json` taken right after, with no traffic in
between (a status sandwiched between two identical scrapes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from bpftap import __version__, abi
from bpftap.agent import metrics
from bpftap.lab import Lab

from .agent_lab import BPFTAP, Agent, hook_state, send_frames
from .test_mirror_e2e import config

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="end-to-end tests need root (network namespaces, BPF)"),
    pytest.mark.skipif(not abi.object_path().exists(), reason="no BPF object: run 'make build'"),
]

# the global counters with families of their own (agent/metrics.py), by their status name
HEADLINE = {stat.name.lower(): f"{name}_total" for stat, (name, _) in metrics.HEADLINE.items()}
Scrape = dict[str, dict[frozenset[tuple[str, str]], float]]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def scrape(lab: Lab, address: str) -> Scrape:
    """GET /metrics from inside the tapped host; sample name -> {labels: value}."""
    get = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    text = lab.run(lab.tap, [sys.executable, "-c", get, f"http://{address}/metrics"]).stdout
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def expected(status: dict, mode: str) -> Scrape:  # type: ignore[type-arg]
    """What the metrics must say, built from `bpftap status --json`."""
    want: Scrape = {name: {frozenset(): status["counters"][key]} for key, name in HEADLINE.items()}
    want["bpftap_not_copied_total"] = {
        frozenset({("reason", k)}): v for k, v in status["counters"].items() if k not in HEADLINE
    }
    for field in ("packets", "bytes"):
        want[f"bpftap_rule_{field}_total"] = {
            frozenset({("rule", str(r["number"])), ("action", r["action"])}): r[field] for r in status["rules"]
        }
    labels = {s["name"]: {("session", s["name"]), ("tunnel", "vxlan"), ("remote", s["remote"])}
              for s in status["sessions"]}
    want["bpftap_session_copies_total"] = {frozenset(labels[s["name"]]): s["packets"] for s in status["sessions"]}
    want["bpftap_session_bytes_total"] = {frozenset(labels[s["name"]]): s["bytes"] for s in status["sessions"]}
    want["bpftap_session_fragments_total"] = {frozenset(labels[s["name"]]): s["fragments"] for s in status["sessions"]}
    want["bpftap_session_gso_total"] = {frozenset(labels[s["name"]]): s["gso"] for s in status["sessions"]}
    want["bpftap_session_not_sent_total"] = {
        frozenset(labels[s["name"]] | {("reason", reason)}): s[reason]
        for s in status["sessions"]
        for reason in abi.SESSION_NOT_SENT
    }
    want["bpftap_session_resolved"] = {frozenset(labels[s["name"]]): float(bool(s["via"])) for s in status["sessions"]}
    want["bpftap_queue_dropped_total"] = {frozenset({("queue", q)}): n for q, n in status["queue_drops"].items()}
    want["bpftap_build_info"] = {
        frozenset({("version", __version__), ("object", str(abi.object_path())), ("attach_mode", mode)}): 1.0
    }
    return want


def traffic(lab: Lab) -> list[bytes]:
    l2 = Ether(src=lab.src.mac, dst=lab.tap.eth0.mac)
    v4 = IP(src=str(lab.src.ip4), dst=str(lab.dst.ip4))
    v6 = IPv6(src=str(lab.src.ip6), dst=str(lab.dst.ip6))
    body = Raw(b"bpftap metrics " * 10)
    return (
        [bytes(l2 / v4 / UDP(sport=6000 + i, dport=7000) / body) for i in range(7)]
        + [bytes(l2 / v6 / UDP(sport=6100 + i, dport=7000) / body) for i in range(3)]
        + [bytes(l2 / v4 / UDP(sport=6200 + i, dport=7001) / body) for i in range(4)]
        + [bytes(l2 / v4 / UDP(sport=6300 + i, dport=7500) / body) for i in range(2)]
    )


@pytest.mark.parametrize("mode,listen", [("tcx", "127.0.0.1:9477"), ("tc", "[::1]:9477")])
def test_scrape_equals_status(lab: Lab, mode: str, listen: str) -> None:
    before = hook_state(lab)
    agent = Agent(lab, config(lab), "--attach", mode, "--metrics", listen)
    try:
        send_frames(lab, lab.src, "eth0", traffic(lab))
        for _ in range(5):
            first = scrape(lab, listen)
            status = agent.status()
            if scrape(lab, listen) == first:
                break  # nothing moved while status was read
        else:
            pytest.fail("the counters never stood still for a scrape, a status and a scrape")
    finally:
        assert agent.stop() == 0
    assert first == expected(status, mode)
    # and the traffic is in there: 10 mirrored to both sessions, 4 skipped
    assert first["bpftap_rule_packets_total"][frozenset({("rule", "20"), ("action", "mirror")})] == 10
    assert first["bpftap_rule_packets_total"][frozenset({("rule", "10"), ("action", "skip")})] == 4
    assert all(v == 10 for v in first["bpftap_session_copies_total"].values())
    assert "metrics on http://" + listen + "/metrics" in agent.output()
    assert hook_state(lab) == before


def test_unusable_address_fails_the_run_before_attaching(lab: Lab, tmp_path: Path) -> None:
    """An address of another host: `run` says so before attaching anything and exits 2 (bad input), which
    the systemd unit's RestartPreventExitStatus keeps from restarting every 2 s."""
    before = hook_state(lab)
    path = tmp_path / "bpftap.yaml"
    path.write_text(config(lab))
    res = lab.run(lab.tap, [*BPFTAP, "run", "-c", str(path), "--metrics", f"{lab.col.ip4}:9477"], check=False)
    assert res.returncode == 2, res.stderr
    assert (f"--metrics {lab.col.ip4}:9477: cannot listen: Cannot assign requested address (EADDRNOTAVAIL)"
            in res.stderr)
    assert "attach" not in res.stderr and "detached" not in res.stderr
    assert hook_state(lab) == before


def test_a_status_socket_in_use_fails_the_run_before_attaching(lab: Lab, tmp_path: Path) -> None:
    """Another process holds the namespace's status socket (another agent would): `run` fails before making
    or attaching anything, and says why."""
    before = hook_state(lab)
    holder = lab.popen(lab.tap, [sys.executable, "-c", "import socket, sys, time\n"
                                 "s = socket.socket(socket.AF_UNIX); s.bind('\\0bpftap.status'); s.listen(1)\n"
                                 "print('bound', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "bound\n"
        path = tmp_path / "bpftap.yaml"
        path.write_text(config(lab))
        res = lab.run(lab.tap, [*BPFTAP, "run", "-c", str(path)], check=False, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 1, res.stderr
    assert "status socket: [Errno 98] Address already in use; is another agent running in this namespace?" \
        in res.stderr
    assert "attached" not in res.stderr
    assert hook_state(lab) == before  # no bpftap0, no program, no qdisc left behind
